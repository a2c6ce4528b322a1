#!/bin/bash
# Drives cwsandbox-local-run directly: init builds a sandbox and runs a
# command as its PID 1, enter runs a command inside a running one. Needs
# root (namespaces, mounts). Prints TAP; exits non-zero if a check failed.
#
#   test-runner.sh PATH-TO-cwsandbox-local-run

set -u

R=${1:?usage: test-runner.sh PATH-TO-cwsandbox-local-run}

if [ "$(id -u)" != 0 ]; then
        echo "1..0 # SKIP needs root"
        exit 0
fi

T=$(mktemp -d "${TMPDIR:-/tmp}/test-runner.XXXXXX")
n=0
failed=0

# shellcheck disable=SC2317   # called by the trap
cleanup() {
        # Whatever a failed check left running: its runner, then the rest.
        for p in $(jobs -p); do
                kill -9 "$p" 2>/dev/null
        done
        wait 2>/dev/null
        rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

ok() {
        n=$((n + 1))
        echo "ok $n - $1"
}

not_ok() {
        n=$((n + 1))
        echo "not ok $n - $1"
        shift
        for line in "$@"; do
                echo "# $line"
        done
        failed=1
}

# expect DESCRIPTION GOT WANT
expect() {
        if [ "$2" == "$3" ]; then
                ok "$1"
        else
                not_ok "$1" "got:  $(printf '%q' "$2")" "want: $(printf '%q' "$3")"
        fi
}

# Its lines joined by single spaces.
flat() {
        tr -s ' \n' '  ' <<< "$1" | sed 's/^ //; s/ $//'
}

# expect_match DESCRIPTION GOT PATTERN (a bash glob)
expect_match() {
        # shellcheck disable=SC2053
        if [[ "$2" == $3 ]]; then
                ok "$1"
        else
                not_ok "$1" "got:  $(printf '%q' "$2")" "want: $3"
        fi
}

scratch() {
        mktemp -d "$T/scratch.XXXXXX"
}

# run [INIT OPTIONS] -- COMMAND...: a sandbox that is expected to end by itself.
run() {
        timeout -k 2 15 "$R" init --id "test-$n" --scratch "$(scratch)" "$@"
}

# start [INIT OPTIONS] -- COMMAND...: a sandbox in the background. Sets OUTER
# (the runner), STATUS (its status line) and PID1; fd 4 reads the status fd.
start() {
        local fifo=$T/status.$n

        mkfifo "$fifo"
        "$R" init --id "bg-$n" --scratch "$(scratch)" --status-fd 3 "$@" 3>"$fifo" &
        OUTER=$!
        exec 4<"$fifo"
        rm -f "$fifo"
        STATUS=
        read -r -t 10 STATUS <&4
        PID1=${STATUS#pid }
}

# Stops a background sandbox for good and reaps its runner.
stop() {
        kill -9 "$OUTER" 2>/dev/null
        reap "$OUTER"
        exec 4<&-
}

# Every descendant of a host pid.
descendants() {
        local p

        # shellcheck disable=SC2013   # the files hold pids separated by spaces
        for p in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
                echo "$p"
                descendants "$p"
        done
}

alive() {
        local state

        state=$(sed 's/.*) //' /proc/"$1"/stat | cut -d' ' -f1)
        [ -n "$state" ] && [ "$state" != Z ]
} 2>/dev/null

# Waits up to 3 s until none of the pids is alive.
all_gone() {
        local p any

        for _ in $(seq 30); do
                any=
                for p in "$@"; do
                        alive "$p" && any=1
                done
                [ -z "$any" ] && return 0
                sleep 0.1
        done
        return 1
}

# Waits for a background child to end, SIGKILLing it after 10 s so that a
# failed check cannot hang the test; returns its exit status.
reap() {
        for _ in $(seq 100); do
                alive "$1" || break
                sleep 0.1
        done
        alive "$1" && kill -9 "$1"
        wait "$1"
} 2>/dev/null   # also bash's notices of jobs killed by a signal

# Waits up to 5 s for COUNT descendants of PID named NAME; prints them.
wait_descendants() {
        local pid=$1 name=$2 count=$3 p found

        for _ in $(seq 50); do
                found=()
                for p in $(descendants "$pid"); do
                        [ "$(cat /proc/"$p"/comm 2>/dev/null)" == "$name" ] && found+=("$p")
                done
                if [ "${#found[@]}" -ge "$count" ]; then
                        echo "${found[@]}"
                        return 0
                fi
                sleep 0.1
        done
        return 1
}

# ---- init: what the sandbox looks like ----

out=$(run --hostname box-one -- hostname)
expect "init: --hostname sets the UTS hostname" "$out" "box-one"

out=$(timeout 15 "$R" init --id 0123456789abcdef --scratch "$(scratch)" -- hostname)
expect "init: the hostname defaults to the id's first 12 characters" "$out" "0123456789ab"

out=$(run -- sh -c 'echo $$')
expect "init: COMMAND is PID 1" "$out" "1"

out=$(run -- sh -c 'ls /proc | grep -c "^[0-9][0-9]*$"')
if [ -n "$out" ] && [ "$out" -le 3 ]; then
        ok "init: /proc is the new PID namespace's ($out pids)"
else
        not_ok "init: /proc is the new PID namespace's" "pids seen: $out"
fi

marker=/etc/cwsandbox-test-runner.$$
out=$(run -- sh -c "echo inside > $marker && cat $marker")
if [ "$out" == inside ] && [ ! -e "$marker" ]; then
        ok "init: writes to /etc stay inside the sandbox"
else
        not_ok "init: writes to /etc stay inside the sandbox" "inside: $out" "on the host: $(ls -l "$marker" 2>&1)"
        rm -f "$marker"
fi

out=$(run -- sh -c 'ls -A /tmp | wc -l; stat -c %a /tmp; echo x > /tmp/f && cat /tmp/f')
expect "init: /tmp is empty, mode 1777 and writable" "$(flat "$out")" "0 1777 x"

out=$(run -- sh -c 'ls /dev | tr "\n" " "; test -c /dev/null && echo > /dev/null && echo null-ok; readlink /dev/ptmx')
expect_match "init: /dev is minimal" "$out" "*fd*full*null*ptmx*pts*random*shm*stderr*stdin*stdout*tty*urandom*zero*null-ok*pts/ptmx"

out=$(run --env FOO=bar --env "SPACED=a b" -- env)
expect "init: --env is exactly the environment (default PATH added)" "$out" \
        "$(printf 'FOO=bar\nSPACED=a b\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')"

out=$(run --env PATH=/bin --env A=1 -- env)
expect "init: a given PATH replaces the default" "$out" "$(printf 'PATH=/bin\nA=1')"

out=$(run --cwd /srv/deep/dir -- pwd)
expect "init: --cwd is created and entered" "$out" "/srv/deep/dir"

printf 'hello\nworld\n' > "$T/src-file"
chmod 600 "$T/src-file"
out=$(run --file /opt/a/b/greeting="$T/src-file" --file /etc/two="$T/src-file" \
        -- sh -c 'cat /opt/a/b/greeting; stat -c %a /opt/a/b/greeting; cat /etc/two')
expect "init: --file copies files into the root (parents made, mode 0644)" "$out" \
        "$(printf 'hello\nworld\n644\nhello\nworld')"

# Scratch dirs under /tmp are hidden by the sandbox's own /tmp anyway: use
# a directory on the root file system, as a server's work dir may be.
H=$(mktemp -d /var/tmp/test-runner.XXXXXX)
echo secret > "$H/other-sandbox-file"
out=$(timeout 15 "$R" init --id hide --scratch "$(mktemp -d "$H/scratch.XXXXXX")" -- ls -A "$H")
rm -rf "$H"
expect "init: the directory holding the scratch dirs is hidden inside" "$out" ""

out=$(run --no-network -- sh -c 'tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " "')
expect "init: --no-network leaves only lo" "$out" "lo"

out=$(run --no-network -- cat /sys/class/net/lo/operstate /sys/class/net/lo/flags 2>/dev/null)
expect_match "init: --no-network brings lo up" "$(flat "$out")" "* 0x*9"

out=$(run --nofile 123 -- sh -c 'ulimit -n')
expect "init: --nofile sets RLIMIT_NOFILE" "$out" "123"

out=$(run -- sh -c 'ls /proc/self/fd | tr "\n" " "' 7</dev/null 9>"$T/leak")
expect "init: no fd above 2 reaches COMMAND" "$out" "0 1 2 3 "

out=$(echo from-stdin | run -- cat)
expect "init: fds 0, 1 and 2 are inherited" "$out" "from-stdin"

# ---- init: status fd and exit codes ----

start -- sleep 30
extra=
read -r -t 3 extra <&4
eof=$?
if [[ "$STATUS" =~ ^pid\ [0-9]+$ ]] && [ "$eof" == 1 ] && [ -z "$extra" ] && alive "$PID1"; then
        ok "status: \"pid N\" then EOF while COMMAND runs"
else
        not_ok "status: \"pid N\" then EOF while COMMAND runs" "status: $STATUS" "read after it: $eof '$extra'"
fi
comm=$(cat /proc/"$PID1"/comm 2>/dev/null)
expect "status: N is PID 1's host pid" "$comm" "sleep"
stop

out=$(run --status-fd 3 -- no-such-command-here 3>"$T/status" 2>/dev/null)
code=$?
expect "status: a missing command gives an error line" "$(cat "$T/status")" \
        "error exec no-such-command-here: No such file or directory"
expect "exit: a missing command exits 127" "$code" 127

run --status-fd 3 --file /not-executable="$T/src-file" -- /not-executable 3>"$T/status" 2>/dev/null
code=$?
expect "exit: a command that cannot be executed exits 126" "$code/$(cut -c1-10 "$T/status")" "126/error exec"

run --status-fd 3 --base "$T/no-such-base" -- true 3>"$T/status" 2>"$T/stderr"
code=$?
expect_match "status: a setup failure gives an error line and exits 125" \
        "$code $(cat "$T/status")" "125 error base */no-such-base: No such file or directory"
expect_match "status: the setup error names the sandbox on stderr" "$(cat "$T/stderr")" "*sandbox test-*: base *"

run -- sh -c 'exit 3'
expect "exit: COMMAND's exit code is passed on" "$?" 3

start -- sleep 30
kill -9 "$PID1"
reap "$OUTER"
expect "exit: 128+9 when PID 1 is killed by SIGKILL" "$?" 137
exec 4<&-

start -- sh -c 'trap "exit 42" TERM; while :; do sleep 0.1; done'
# PID 1 of a namespace ignores signals it has no handler for: wait until the
# shell has set its trap (SIGTERM, bit 15, in SigCgt) before sending one.
for _ in $(seq 100); do
        cgt=$(sed -n 's/^SigCgt:[[:space:]]*//p' /proc/"$PID1"/status 2>/dev/null)
        [ -n "$cgt" ] && (( (16#$cgt >> 14) & 1 )) && break
        sleep 0.05
done
kill -TERM "$OUTER"
reap "$OUTER"
expect "signals: SIGTERM to the runner reaches a trapping PID 1" "$?" 42
exec 4<&-

start -- sh -c 'sleep 3131 & sleep 3132 & wait'
procs=$(wait_descendants "$OUTER" sleep 2)
stop
# shellcheck disable=SC2086
if [ -n "$procs" ] && all_gone "$PID1" $procs; then
        ok "lifetime: SIGKILL of the runner takes the whole sandbox down"
else
        not_ok "lifetime: SIGKILL of the runner takes the whole sandbox down" "left: $PID1 $procs"
fi

# ---- limits (where the kernel lets us) ----

start --memory 67108864 --pids 16 -- sleep 30
limits=$(sed -n 's/^[0-9]*:\([a-z,]*\):\(.*cwsandbox-.*\)$/\1 \2/p' /proc/"$PID1"/cgroup 2>/dev/null)
got=
while read -r ctrl path; do
        case "$ctrl" in
        "") got+=" $(cat /sys/fs/cgroup"$path"/memory.max /sys/fs/cgroup"$path"/pids.max)" ;;
        memory) got+=" $(cat /sys/fs/cgroup/memory"$path"/memory.limit_in_bytes)" ;;
        pids) got+=" $(cat /sys/fs/cgroup/pids"$path"/pids.max)" ;;
        esac
done <<< "$limits"
stop
if [ -z "$limits" ]; then
        ok "limits: --memory and --pids # SKIP no writable cgroup here"
else
        expect_match "limits: --memory and --pids set the sandbox's cgroup" "$(flat "$(tr ' ' '\n' <<< "$got" | sort -n)")" \
                "16 67108864"
        left=
        while read -r ctrl path; do
                for d in /sys/fs/cgroup"$path" /sys/fs/cgroup/"$ctrl""$path"; do
                        [ -n "$ctrl" ] || [ "$d" == /sys/fs/cgroup"$path" ] || continue
                        [ -d "$d" ] && left+=" $d"
                done
        done <<< "$limits"
        # Only an empty cgroup can go: wait for PID 1 to be gone first.
        all_gone "$PID1"
        run --memory 67108864 --pids 16 -- true 2>/dev/null
        for d in $left; do
                [ -d "$d" ] || left=${left/ $d/}
        done
        expect "limits: a SIGKILLed runner's cgroup is swept by the next one" "$left" ""
fi

# ---- enter ----

start --hostname enter-box --env PATH=/usr/bin:/bin -- \
        sh -c 'echo marked > /etc/marker; mkdir -p /srv/data; trap "exit 0" TERM; while :; do sleep 0.1; done'
sleep 0.2

out=$(timeout 15 "$R" enter --pid "$PID1" -- sh -c 'hostname; cat /etc/marker; readlink /proc/self/ns/pid')
expect "enter: runs inside (hostname, files, PID namespace)" "$(flat "$out")" \
        "enter-box marked $(readlink /proc/"$PID1"/ns/pid)"

out=$(timeout 15 "$R" enter --pid "$PID1" --env ONE=1 --cwd /srv/data -- sh -c 'pwd; env')
expect "enter: --env is exactly the environment, --cwd the directory" "$out" \
        "$(printf '/srv/data\nONE=1\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nPWD=/srv/data')"

timeout 15 "$R" enter --pid "$PID1" -- sh -c 'exit 5'
expect "enter: the command's exit code is passed on" "$?" 5

err=$(timeout 15 "$R" enter --pid "$PID1" -- no-such-command-here 2>&1)
code=$?
expect "enter: a missing command exits 127 with a message" "$code: $err" \
        "127: cwsandbox-local-run: no-such-command-here: command not found"

timeout 15 "$R" enter --pid "$PID1" --cwd /no/such/dir -- true 2>/dev/null
expect "enter: a missing --cwd exits 125" "$?" 125

"$R" enter --pid "$PID1" -- sh -c 'sleep 3231 & sleep 3232; echo not reached' &
ENTER=$!
procs=$(wait_descendants "$ENTER" sleep 2)
kill -TERM "$ENTER"
reap "$ENTER"
code=$?
# shellcheck disable=SC2086
if [ "$code" == 143 ] && [ -n "$procs" ] && all_gone $procs && alive "$PID1"; then
        ok "enter: SIGTERM to the runner kills the command's group, exits 143"
else
        not_ok "enter: SIGTERM to the runner kills the command's group, exits 143" \
                "exit $code, sleeps: $procs" "$(ps -o pid,stat,cmd -p "${procs// /,}" 2>&1)"
fi
stop
all_gone "$PID1"

timeout 15 "$R" enter --pid "$PID1" -- true 2>/dev/null
expect "enter: a sandbox that is gone exits 125" "$?" 125

timeout 15 "$R" enter --pid $$ -- true 2>/dev/null
expect "enter: a pid outside any sandbox is refused (125)" "$?" 125

# ---- usage ----

"$R" --help > /dev/null
expect "usage: --help exits 0" "$?" 0

"$R" init --scratch "$T" 2>/dev/null
expect "usage: a missing COMMAND exits 2" "$?" 2

"$R" enter --no-network --pid 1 -- true 2>/dev/null
expect "usage: an option of the other mode exits 2" "$?" 2

echo "1..$n"
exit $failed
