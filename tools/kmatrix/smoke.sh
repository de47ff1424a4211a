#!/bin/bash
# The user-level checks of each matrix kernel, as a newcomer would run them:
#   tools/kernel-matrix run KERNEL -- tools/kmatrix/smoke.sh
# Each line: CHECK ok|FAIL (what was seen). Exit 1 if any check failed.
set -u
fail=0
check() {  # check NAME COMMAND... ; the command's output must contain $want
    local name=$1; shift
    local out
    out=$("$@" 2>&1)
    if grep -q -- "$want" <<<"$out"; then
        echo "$name ok"
    else
        echo "$name FAIL"; echo "$out" | tail -5 | sed 's/^/    /'; fail=1
    fi
}
# A traced run ends after 3 s; the signal is sent once the tracer has printed its ready line.
traced() {  # traced SIGSCOPE-ARGS... : sigscope ARGS -T SLEEPER -d 3, one SIGUSR1 to the sleeper
    sleep 30 & local victim=$!
    local fifo; fifo=$(mktemp -u); mkfifo "$fifo"
    sigscope "$@" -T $victim -d 3 > "$fifo" 2>&1 &
    local tracer=$!
    { while read -r line; do
          echo "$line"
          case $line in Tracing*|*"Counting"*) kill -USR1 $victim ;; esac
      done < "$fifo"; }
    wait $tracer; rm -f "$fifo"; kill $victim 2>/dev/null; wait $victim 2>/dev/null
    return 0
}
want="selftest: ok";            check selftest sigscope selftest
want="SIGUSR1";                 check trace traced trace -s USR1
want="terminated";                check trace-fate traced trace --fate -s USR1
want="SIGUSR1";                 check top traced top -s USR1
# Without BTF (SIGSCOPE_NO_BTF=1 makes sigscope ignore /sys/kernel/btf/vmlinux):
want="SIGUSR1";    SIGSCOPE_NO_BTF=1 check trace-no-btf traced trace -s USR1
want="SIGUSR1";    SIGSCOPE_NO_BTF=1 check top-no-btf traced top -s USR1
exit $fail
