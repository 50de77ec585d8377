"""Multi-process and network-namespace scenarios. ``interop.netns`` is the shared test-host kit."""
