#!/bin/bash
# The systemd side as shipped: the units pass systemd-analyze verify, the
# hardened unit's exposure (remote backend) is 2.0 or lower and is printed
# with the embedded-backend drop-in's, the example configuration names every
# key (the unit test 'config' loads it), and `meson install --destdir` lays
# out every file.
# Prints TAP.
#
#   test-systemd-units.sh BUILD-DIR SOURCE-DIR

set -u

B=${1:?usage: test-systemd-units.sh BUILD-DIR SOURCE-DIR}
S=${2:?usage: test-systemd-units.sh BUILD-DIR SOURCE-DIR}
T=$(mktemp -d "${TMPDIR:-/tmp}/test-systemd-units.XXXXXX")
n=0
failed=0
trap 'rm -rf "$T"' EXIT

check() {
        n=$((n + 1))
        if [ "$1" = 0 ]; then
                echo "ok $n - $2"
        else
                echo "not ok $n - $2"
                failed=1
        fi
}

# ---- verify and security ----

# The unit as installed, but starting the daemon just built (verify wants an ExecStart that exists).
mkdir -p "$T/units/cwsandboxd.service.d"
sed "s|^ExecStart=[^ ]*|ExecStart=$B/daemon/cwsandboxd|" "$B/systemd/cwsandboxd.service" > "$T/units/cwsandboxd.service"
cp "$S/systemd/cwsandboxd.socket" "$T/units/"
out=$(cd "$T/units" && systemd-analyze verify --man=no cwsandboxd.service cwsandboxd.socket 2>&1)
check $? "systemd-analyze verify: the service and the socket"
[ -z "$out" ]
check $? "verify: no warnings${out:+: $out}"

exposure() {
        (cd "$T/units" && SYSTEMD_UNIT_PATH="$T/units:" systemd-analyze security --offline=yes cwsandboxd.service 2>/dev/null) |
                sed -n 's/.*Overall exposure level for cwsandboxd.service: \([0-9.]*\).*/\1/p'
}
remote=$(exposure)
[ -n "$remote" ] && awk -v e="$remote" 'BEGIN { exit !(e <= 2.0) }'
check $? "security --offline: exposure $remote for the remote-backend unit (goal 2.0 or lower)"
cp "$S/systemd/local-backend.conf" "$T/units/cwsandboxd.service.d/"
out=$(cd "$T/units" && SYSTEMD_UNIT_PATH="$T/units:" systemd-analyze verify --man=no cwsandboxd.service 2>&1)
[ -z "$out" ]
check $? "verify: the embedded-backend drop-in${out:+: $out}"
echo "# exposure with the embedded-backend drop-in (namespaces, mounts, root): $(exposure)"

grep -q '^ListenStream=/run/cwsandboxd/' "$S/systemd/cwsandboxd.socket" &&
        grep -q '^SocketMode=0660$' "$S/systemd/cwsandboxd.socket" &&
        grep -q '^SocketGroup=cwsandbox$' "$S/systemd/cwsandboxd.socket"
check $? "the socket: under /run/cwsandboxd/, mode 0660, group cwsandbox"
for key in Type=notify NotifyAccess=main WatchdogSec= ExecReload= Restart=on-failure StateDirectory= \
           RuntimeDirectory= ConfigurationDirectory= LoadCredential=api-key: ProtectSystem=strict ProtectHome=yes \
           PrivateTmp=yes NoNewPrivileges=yes RestrictAddressFamilies= SystemCallFilter=; do
        grep -q "^$key" "$B/systemd/cwsandboxd.service" || { echo "# missing: $key"; false; }
        check $? "the service sets $key"
done

# ---- the example configuration ----

missing=""
for flag in $("$B/daemon/cwsandboxd" --help | sed -n 's/^ *--\([a-z-]*\).*/\1/p'); do
        [ "$flag" = help ] || [ "$flag" = version ] || [ "$flag" = config ] && continue
        key=${flag//-/_}
        grep -Eq "^#?$key =( |$)" "$S/systemd/cwsandboxd.conf" || missing="$missing $key"
done
[ -z "$missing" ]
check $? "the example documents every key${missing:+; missing:$missing}"

# ---- install layout ----

DEST="$T/dest"
meson install -C "$B" --destdir "$DEST" --no-rebuild >/dev/null 2>&1
check $? "meson install --destdir"
prefix=$(meson introspect "$B" --buildoptions | python3 -c \
        'import json,sys; print({o["name"]: o["value"] for o in json.load(sys.stdin)}["prefix"])')
sysconf=$( [ "$prefix" = /usr ] && echo /etc || echo "$prefix/etc" )
for f in sbin/cwsandboxd bin/cwsandboxctl bin/cwsandbox-local libexec/cwsandbox/cwsandbox-local-run \
         include/cwsandbox.h lib/systemd/system/cwsandboxd.service lib/systemd/system/cwsandboxd.socket \
         lib/sysusers.d/cwsandboxd.conf lib/tmpfiles.d/cwsandboxd.conf share/cwsandboxd/local-backend.conf \
         share/bash-completion/completions/cwsandboxctl share/doc/cwsandboxd/README.md; do
        [ -e "$DEST$prefix/$f" ]
        check $? "installed: $prefix/$f"
done
[ -e "$DEST$sysconf/cwsandboxd/cwsandboxd.conf" ]
check $? "installed: $sysconf/cwsandboxd/cwsandboxd.conf"
ls "$DEST$prefix"/lib/*/libcwsandbox.so.0 "$DEST$prefix"/lib/*/pkgconfig/libcwsandbox.pc >/dev/null 2>&1
check $? "installed: the library and its pkg-config file under $prefix/lib/<triplet>"
grep -q "^ExecStart=$prefix/sbin/cwsandboxd --config $sysconf/cwsandboxd/cwsandboxd.conf" \
        "$DEST$prefix/lib/systemd/system/cwsandboxd.service"
check $? "the installed unit starts $prefix/sbin/cwsandboxd with $sysconf/cwsandboxd/cwsandboxd.conf"

# ---- journal fields ----

# Under systemd ($JOURNAL_STREAM set) the daemon sends native journal records.
# In a mount namespace of its own, /run/systemd/journal/socket is the test's:
# the records name the session, the sandbox and the client that asked.
journal() {
        mount -t tmpfs tmpfs /run || return 1
        mkdir -p /run/systemd/journal
        python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/run/systemd/journal/socket")
s.settimeout(30)
with open(sys.argv[1], "w") as out:
    try:
        while True:
            out.write(s.recv(65536).decode("utf-8", "replace").replace("\n", "|") + "\n")
            out.flush()
    except socket.timeout:
        pass
' "$T/journal.txt" &
        local rx=$!
        while [ ! -S /run/systemd/journal/socket ]; do sleep 0.05; done
        JOURNAL_STREAM=0:0 "$B/daemon/cwsandboxd" --config=/dev/null --socket "$T/j.sock" --state-dir "$T/jstate" \
                --local-backend-path "$B/localbackend/cwsandbox-local" --log-level info 2>"$T/jstderr" &
        local d=$!
        for _ in $(seq 200); do [ -S "$T/j.sock" ] && break; sleep 0.05; done
        "$B/client/ctl/cwsandboxctl" --socket "$T/j.sock" session create journal-test --linger 0 >/dev/null &
        local ctl=$!
        wait $ctl
        echo "$ctl" > "$T/ctl.pid"
        "$B/client/ctl/cwsandboxctl" --socket "$T/j.sock" run --session journal-test --wait >/dev/null
        "$B/client/ctl/cwsandboxctl" --socket "$T/j.sock" session close journal-test >/dev/null
        kill -TERM $d
        wait $d
        sleep 0.3
        kill $rx 2>/dev/null
        wait $rx 2>/dev/null
        return 0
}
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && command -v python3 >/dev/null; then
        export -f journal
        export B T
        unshare -m --propagation private bash -c journal
        check $? "journal: a daemon with \$JOURNAL_STREAM in a mount namespace with the test's journal socket"
        ctl=$(cat "$T/ctl.pid" 2>/dev/null)
        grep -q "SYSLOG_IDENTIFIER=cwsandboxd|" "$T/journal.txt" && grep -q "PRIORITY=" "$T/journal.txt"
        check $? "journal: native records with PRIORITY= and SYSLOG_IDENTIFIER="
        grep "session 'journal-test' created" "$T/journal.txt" | grep -q "SESSION=s-" &&
                grep "session 'journal-test' created" "$T/journal.txt" | grep -q "CLIENT_PID=$ctl|"
        check $? "journal: the session's creation carries SESSION= and CLIENT_PID= of the client ($ctl)"
        grep "created sandbox" "$T/journal.txt" | grep -q "SANDBOX_ID=sb-"
        check $? "journal: the sandbox's creation carries SANDBOX_ID="
        [ ! -s "$T/jstderr" ] || ! grep -q "^cwsandboxd:" "$T/jstderr"
        check $? "journal: nothing of the daemon's on stderr meanwhile"
else
        echo "ok $((n + 1)) # SKIP journal fields: needs root, unshare and python3"
        n=$((n + 1))
fi

echo "1..$n"
exit $failed
