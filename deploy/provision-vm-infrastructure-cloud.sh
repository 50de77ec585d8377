#!/bin/sh
# The platform's cloud provisioning script, over ppn (issue 17). --help says what it does;
# the work is in ppn-provision beside it (one implementation for both scripts).
# (readlink: the script may be called through a symlink, e.g. in /usr/local/bin)
exec "$(dirname "$(readlink -f "$0")")/ppn-provision" cloud "$@"
