#!/bin/sh
# A stand-in for the platform's VM launcher (ppn vmhost serve --provisioner CMD): the vm-host
# runs it with the VM spec as JSON on stdin and in PPN_VM_* variables; exit 0 means running,
# and its last line of output becomes the VM's status detail.
echo "launched $PPN_VM_NAME with $PPN_VM_RAM_MB MB"
