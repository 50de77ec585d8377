#!/bin/sh
# A stand-in for the platform's VM launcher (ppn vmhost serve --provisioner CMD): the vm-host
# runs it for every action on a VM with the spec and the action as JSON on stdin and in PPN_VM_*
# variables (PPN_VM_ACTION: create, stop, start, delete); exit 0 means done, and its last line
# of output becomes the VM's status detail. A real launcher acts on PPN_VM_ACTION, and keeps a
# VM-Totebox's vault data on delete (PPN_VM_KEEP_DATA=1): it is the entity's archive.
case "${PPN_VM_ACTION:-create}" in
  create) echo "launched $PPN_VM_NAME with $PPN_VM_RAM_MB MB" ;;
  stop) echo "stopped $PPN_VM_NAME" ;;
  start) echo "started $PPN_VM_NAME" ;;
  delete)
    if [ "${PPN_VM_KEEP_DATA:-0}" = 1 ]; then
      echo "deleted $PPN_VM_NAME; its vault data is kept"
    else
      echo "deleted $PPN_VM_NAME"
    fi ;;
  *) echo "unknown action $PPN_VM_ACTION" >&2; exit 2 ;;
esac
