# PID 1 of the scripts/vm guest (busybox sh): builds the root, cgroup v2 and the user, runs
# the job's command.sh and leaves its exit status in the job share.  Copied into every run.
#   boot: in the initramfs; root = host / (9p, read-only) under a tmpfs overlay; switch_root
#   run:  in the new root; cgroup2, delegation, user, command, status, reboot (QEMU exits)
set -u
EXIT_GUEST_FAILED=125

boot() {
    B=/bin/busybox
    R=/newroot
    $B mkdir -p /lower /upper
    $B mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro,cache=loose root /lower || exit 1
    $B mount -t tmpfs -o mode=0755 overlay-upper /upper || exit 1
    $B mkdir /upper/data /upper/work
    $B mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay $R || exit 1
    for d in proc sys dev run tmp; do $B mkdir -p $R/$d; done
    $B mount -t tmpfs -o mode=0755,nosuid,nodev run $R/run
    $B mount -t tmpfs -o mode=1777,nosuid,nodev tmp $R/tmp
    $B mkdir -p $R/run/pgjob-vm/job
    $B cp $B $R/run/pgjob-vm/busybox
    $B mount --move /job $R/run/pgjob-vm/job
    $B mount --move /proc $R/proc
    $B mount --move /sys $R/sys
    $B mount --move /dev $R/dev
    # switch_root, not chroot: the kernel refuses unshare(CLONE_NEWUSER) inside a chroot.
    exec $B switch_root $R /run/pgjob-vm/busybox sh /run/pgjob-vm/job/guest_init.sh run
}

fail() {
    echo "vm guest: $*" >&2
    echo $EXIT_GUEST_FAILED > "$J/status"
    $B sync
    $B reboot -f
}

port() {  # the /dev node of the virtio serial port named $1
    for p in /sys/class/virtio-ports/*; do
        [ "$($B cat "$p/name")" = "$1" ] && { echo "/dev/${p##*/}"; return 0; }
    done
    return 1
}

enable_controllers() {  # every controller the cgroup has, for its children
    for c in $($B cat "$1/cgroup.controllers"); do
        echo "+$c" > "$1/cgroup.subtree_control" || fail "cannot enable $c in $1"
    done
}

delegate() {  # chown a cgroup to the user the way systemd's Delegate=yes does
    $B chown "$VM_UID:$VM_UID" "$1" "$1/cgroup.procs" "$1/cgroup.subtree_control" \
        "$1/cgroup.threads" || fail "cannot delegate $1"
}

start_relays() {
    # The command writes into pipes, as on a host, and a cat copies each to its port: a
    # virtio port takes at most 32 KiB per write(), and an unbuffered Python (-u,
    # PYTHONUNBUFFERED) drops the rest of a short write to stdout.
    P=/run/pgjob-vm
    $B mkfifo -m 0600 $P/stdout $P/stderr || fail "mkfifo"
    $B cat $P/stdout >&3 3>&- 4>&- &
    RELAYS=$!
    $B cat $P/stderr >&4 3>&- 4>&- &
    RELAYS="$RELAYS $!"
}

run() {
    B=/run/pgjob-vm/busybox
    J=/run/pgjob-vm/job
    OUT=$(port pgjob.stdout) && ERR=$(port pgjob.stderr) || fail "no virtio ports for stdout/stderr"
    # A virtio port opens once: hold both on 3 and 4 (the command never sees them: the tests
    # count its descriptors).
    exec 3>"$OUT" 4>"$ERR" 2>&4
    . "$J/settings.sh"
    $B mkdir -p /dev/pts /dev/shm
    $B mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
    $B mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
    # As systemd mounts it: namespaces are delegation boundaries, memory.low protects down.
    $B mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup \
        || fail "cannot mount cgroup2"
    CG=/sys/fs/cgroup
    enable_controllers $CG
    $B ip link set lo up 2>/dev/null
    $B hostname pgjob-vm
    if [ -n "$VM_UID" ]; then
        if [ -n "$VM_ADD_USER" ]; then
            echo "$VM_ADD_USER" >> /etc/passwd
            echo "${VM_ADD_USER%%:*}:x:$VM_UID:" >> /etc/group
        fi
        $B mkdir -p "$VM_HOME" && $B chown "$VM_UID:$VM_UID" "$VM_HOME"
        # The user must reach the pyenv Pythons under /root (0700) and the work tree; the
        # chmod lands in the RAM overlay, the host is untouched.
        while IFS= read -r d; do
            [ -d "$d" ] && $B chmod o+x "$d"
        done < "$J/traverse"
        # The layout systemd gives a user manager: user.slice/user-UID.slice/user@UID.service
        # delegated (Delegate=yes), the user's processes in a leaf below it.
        D=$CG/user.slice/user-$VM_UID.slice/user@$VM_UID.service
        LEAF=$D/vm-command.scope
        $B mkdir -p "$LEAF" || fail "cannot create $LEAF"
        enable_controllers $CG/user.slice
        enable_controllers $CG/user.slice/user-$VM_UID.slice
        enable_controllers "$D"
        delegate "$D"
        delegate "$LEAF"
        start_relays
        $B sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' sh "$LEAF" \
            /usr/bin/setpriv --reuid="$VM_UID" --regid="$VM_UID" --clear-groups -- \
            $B sh "$J/command.sh" </dev/null >$P/stdout 2>$P/stderr 3>&- 4>&-
        rc=$?
    else
        start_relays
        $B sh "$J/command.sh" </dev/null >$P/stdout 2>$P/stderr 3>&- 4>&-
        rc=$?
    fi
    # The relays end when the last writer closes; a daemon the command left holding its
    # stdout would keep them forever, so they get 2 s.
    ( $B sleep 2; $B kill $RELAYS ) 2>/dev/null &
    WATCHDOG=$!
    wait $RELAYS 2>/dev/null  # no "Terminated" lines on the command's stderr
    $B kill $WATCHDOG 2>/dev/null
    echo $rc > "$J/status"
    $B sync
    $B reboot -f
}

case "${1:-}" in
    boot) boot ;;
    run) run ;;
    *) echo "usage: guest_init.sh boot|run" >&2; exit 1 ;;
esac
# Reached only if boot/run fell through: PID 1 exits, the kernel panics, QEMU exits.
exit 1
