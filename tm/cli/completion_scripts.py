"""The bodies of the completion scripts (:mod:`tm.cli.completion` puts the options and the
commands before them as ``_tm_*`` variables)."""

BASH = r"""
# The word being completed, glued back where bash split it at ':' (COMP_WORDBREAKS):
# `lajob:1` is three words for bash. Sets _tm_full (the word) and _tm_first (its first part).
_tm_word() {
    local i=$COMP_CWORD w="${COMP_WORDS[COMP_CWORD]}"
    _tm_full=$w
    while (( i > 1 )) && [[ $w == : || ${COMP_WORDS[i-1]} == : ]]; do
        (( i-- ))
        w=${COMP_WORDS[i]}
        _tm_full=$w$_tm_full
    done
    _tm_first=$i
}

# COMPREPLY: the candidates starting with the word, less what bash keeps before its last ':'.
_tm_reply() {
    local c prefix=""
    if [[ $COMP_WORDBREAKS == *:* && $_tm_full == *:* ]]; then
        prefix=${_tm_full%"${_tm_full##*:}"}
    fi
    COMPREPLY=()
    for c in "$@"; do
        [[ $c == "$_tm_full"* ]] && COMPREPLY+=("${c#"$prefix"}")
    done
    return 0
}

_tm_has() {  # _tm_has WORD LIST: WORD is one of the words of LIST
    [[ " $2 " == *" $1 "* ]]
}

_tm_hconnect() {
    _tm_word
    local target=tms i w prev=${COMP_WORDS[_tm_first-1]}
    for (( i = 1; i < _tm_first; i++ )); do
        w=${COMP_WORDS[i]}
        if [[ $w == -T || $w == --connect_to_td ]]; then
            target=dispatcher
        elif _tm_has "$w" "$_tm_hconnect_valued"; then
            (( i++ ))
        elif [[ $w != -* ]]; then
            COMPREPLY=()  # the command is given: one command per call
            return 0
        fi
    done
    if [[ $prev == --completion ]]; then
        _tm_reply bash zsh
        return 0
    elif _tm_has "$prev" "$_tm_hconnect_files"; then
        COMPREPLY=($(compgen -f -- "$_tm_full"))
        return 0
    fi
    case $_tm_full in
    -*)
        _tm_reply $_tm_hconnect_opts
        ;;
    *:*)
        local id through=${_tm_full%"${_tm_full##*:}"} candidates=()
        if _tm_has "${_tm_full%%:*}" "$_tm_id_commands"; then
            for id in $(hConnect --complete-ids 2>/dev/null); do
                candidates+=("$through$id")
            done
        fi
        _tm_reply "${candidates[@]}"
        ;;
    *)
        if [[ $target == dispatcher ]]; then
            _tm_reply $_tm_td_commands
        else
            _tm_reply $_tm_tms_commands
        fi
        # `lajob:` takes its argument right after the colon
        if [[ ${#COMPREPLY[@]} == 1 && ${COMPREPLY[0]} == *: ]]; then
            compopt -o nospace 2>/dev/null
        fi
        ;;
    esac
    return 0
}

_tm_hrunjob() {
    _tm_word
    local i w prev=${COMP_WORDS[_tm_first-1]}
    for (( i = 1; i < _tm_first; i++ )); do
        w=${COMP_WORDS[i]}
        if [[ $w == -- ]]; then  # hRunJob [options] -- CMD ARG...
            if (( i == _tm_first - 1 )); then
                COMPREPLY=($(compgen -c -- "$_tm_full"))
            else
                COMPREPLY=($(compgen -f -- "$_tm_full"))
            fi
            return 0
        elif _tm_has "$w" "$_tm_hrunjob_valued"; then
            (( i++ ))
        elif [[ $w != -* ]]; then  # the command's arguments
            COMPREPLY=($(compgen -f -- "$_tm_full"))
            return 0
        fi
    done
    if [[ $prev == --completion ]]; then
        _tm_reply bash zsh
        return 0
    elif [[ $prev == -S || $prev == --shell ]]; then
        _tm_reply $(grep -v '^#' /etc/shells 2>/dev/null)
        return 0
    elif _tm_has "$prev" "$_tm_hrunjob_files"; then
        COMPREPLY=($(compgen -f -- "$_tm_full"))
        return 0
    elif _tm_has "$prev" "$_tm_hrunjob_valued"; then
        COMPREPLY=()  # a number or a text: nothing to offer
        return 0
    fi
    if [[ $_tm_full == -* ]]; then
        _tm_reply $_tm_hrunjob_opts
    else
        COMPREPLY=($(compgen -c -- "$_tm_full"))
    fi
    return 0
}

complete -F _tm_hconnect hConnect
complete -F _tm_hrunjob hRunJob
"""

ZSH = r"""
_tm_has() {  # _tm_has WORD LIST: WORD is one of the words of LIST
    [[ " $2 " == *" $1 "* ]]
}

# reply: what the word $2 may become as an hConnect command of $1 (tms or dispatcher).
_tm_hconnect_candidates() {
    local target=$1 word=$2 through id
    reply=()
    case $word in
    -*)
        reply=(${=_tm_hconnect_opts})
        ;;
    *:*)
        if _tm_has "${word%%:*}" "$_tm_id_commands"; then
            through=${word%${word##*:}}
            for id in $(hConnect --complete-ids 2>/dev/null); do
                reply+=("$through$id")
            done
        fi
        ;;
    *)
        if [[ $target == dispatcher ]]; then
            reply=(${=_tm_td_commands})
        else
            reply=(${=_tm_tms_commands})
        fi
        ;;
    esac
    reply=(${(M)reply:#${word}*})
}

_tm_hconnect() {
    local target=tms i w
    local -a reply
    for (( i = 2; i < CURRENT; i++ )); do
        w=${words[i]}
        if [[ $w == -T || $w == --connect_to_td ]]; then
            target=dispatcher
        elif _tm_has "$w" "$_tm_hconnect_valued"; then
            (( i++ ))
        elif [[ $w != -* ]]; then
            return 1
        fi
    done
    case ${words[CURRENT-1]} in
    --completion) compadd bash zsh; return ;;
    --dispatcher) _files; return ;;
    esac
    _tm_hconnect_candidates $target "${words[CURRENT]}"
    compadd -S '' -- ${(M)reply:#*:}
    compadd -- ${reply:#*:}
}

_tm_hrunjob() {
    local i w prev=${words[CURRENT-1]}
    for (( i = 2; i < CURRENT; i++ )); do
        w=${words[i]}
        if [[ $w == -- ]]; then  # hRunJob [options] -- CMD ARG...
            words=(${words[i+1,-1]})
            (( CURRENT -= i ))
            _normal
            return
        elif _tm_has "$w" "$_tm_hrunjob_valued"; then
            (( i++ ))
        elif [[ $w != -* ]]; then
            _files
            return
        fi
    done
    if [[ $prev == --completion ]]; then
        compadd bash zsh
    elif [[ $prev == -S || $prev == --shell ]]; then
        compadd -- ${(f)"$(grep -v '^#' /etc/shells 2>/dev/null)"}
    elif _tm_has "$prev" "$_tm_hrunjob_files"; then
        _files
    elif _tm_has "$prev" "$_tm_hrunjob_valued"; then
        return 1
    elif [[ ${words[CURRENT]} == -* ]]; then
        compadd -- ${=_tm_hrunjob_opts}
    else
        _command_names -e
    fi
}

if (( $+functions[compdef] )); then
    compdef _tm_hconnect hConnect
    compdef _tm_hrunjob hRunJob
else
    print -u2 "TaskManager completion: run 'autoload -Uz compinit && compinit' first"
fi
"""
