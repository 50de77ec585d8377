#!/bin/sh
# The platform's onprem provisioning script, over ppn (issue 17). --help says what it does;
# the work is in ppn-provision beside it (one implementation for both scripts).
exec "$(dirname "$0")/ppn-provision" onprem "$@"
