# bash completion for cwsandboxctl: commands, subcommands, options, and
# sandbox ids and session names asked of the daemon (quietly; nothing is
# offered when it cannot be reached).

_cwsandboxctl_query() {
        # $1: "ids" or "sessions"; the --socket given so far is honoured.
        local socket_args=() i
        for ((i = 1; i < ${#COMP_WORDS[@]} - 1; i++)); do
                if [[ ${COMP_WORDS[i]} == --socket ]]; then
                        socket_args=(--socket "${COMP_WORDS[i + 1]}")
                fi
        done
        if [[ $1 == ids ]]; then
                "${COMP_WORDS[0]}" "${socket_args[@]}" ls 2>/dev/null | awk 'NR > 1 { print $1 }'
        else
                "${COMP_WORDS[0]}" "${socket_args[@]}" session ls 2>/dev/null | awk 'NR > 1 { print $1 }'
        fi
}

_cwsandboxctl() {
        local cur prev cmd sub i
        local commands="status session run exec ls get cp logs stop delete metrics help"
        local common="--help --output -o --socket"
        COMPREPLY=()
        cur=${COMP_WORDS[COMP_CWORD]}
        prev=${COMP_WORDS[COMP_CWORD - 1]}

        # The command and the session subcommand, past global options and their values.
        for ((i = 1; i < COMP_CWORD; i++)); do
                case ${COMP_WORDS[i]} in
                --socket | -o | --output)
                        ((i++))
                        ;;
                -*) ;;
                *)
                        if [[ -z $cmd ]]; then
                                cmd=${COMP_WORDS[i]}
                        elif [[ $cmd == session && -z $sub ]]; then
                                sub=${COMP_WORDS[i]}
                        fi
                        ;;
                esac
        done

        case $prev in
        -o | --output)
                COMPREPLY=($(compgen -W "table json" -- "$cur"))
                return
                ;;
        --socket)
                COMPREPLY=($(compgen -f -- "$cur"))
                return
                ;;
        --status)
                COMPREPLY=($(compgen -W "pending creating running paused terminating completed failed terminated" -- "$cur"))
                return
                ;;
        --session)
                COMPREPLY=($(compgen -W "$(_cwsandboxctl_query sessions)" -- "$cur"))
                return
                ;;
        --cwd)
                return
                ;;
        --tag | --image | --env | --linger | --timeout | --grace | --tail | --since)
                return
                ;;
        esac

        if [[ -z $cmd ]]; then
                if [[ $cur == -* ]]; then
                        COMPREPLY=($(compgen -W "$common --version" -- "$cur"))
                else
                        COMPREPLY=($(compgen -W "$commands" -- "$cur"))
                fi
                return
        fi

        local opts=""
        case $cmd in
        session)
                if [[ -z $sub ]]; then
                        COMPREPLY=($(compgen -W "create ls close adopt" -- "$cur"))
                        return
                fi
                case $sub in
                create) opts="--tag --image --env --linger" ;;
                close | adopt)
                        if [[ $cur != -* ]]; then
                                COMPREPLY=($(compgen -W "$(_cwsandboxctl_query sessions) $(
                                        [[ $sub == adopt ]] && _cwsandboxctl_query ids)" -- "$cur"))
                                return
                        fi
                        ;;
                esac
                ;;
        run) opts="--session --image --tag --env --wait" ;;
        exec) opts="--stdin -i --tty -t --timeout --cwd --env" ;;
        ls) opts="--session --tag --status --all" ;;
        logs) opts="--follow -f --tail --since --timestamps -t" ;;
        stop) opts="--grace --missing-ok" ;;
        delete) opts="--missing-ok" ;;
        metrics) opts="--session --reset --prometheus" ;;
        help)
                COMPREPLY=($(compgen -W "$commands" -- "$cur"))
                return
                ;;
        esac

        if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "$common $opts" -- "$cur"))
                return
        fi
        case $cmd in
        exec | get | logs | stop | delete)
                COMPREPLY=($(compgen -W "$(_cwsandboxctl_query ids)" -- "$cur"))
                ;;
        cp)
                COMPREPLY=($(compgen -f -- "$cur") $(compgen -W "$(_cwsandboxctl_query ids | sed 's/$/:/')" -- "$cur"))
                compopt -o nospace 2>/dev/null
                ;;
        esac
}

complete -F _cwsandboxctl cwsandboxctl
