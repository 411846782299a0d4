#!/usr/bin/env bash
# Drives `bakeoff chat` in a real terminal (tmux): a streaming answer interrupted with Ctrl-C
# (the program keeps running), /stats, /system, /save, Ctrl-C at the prompt, /quit.
# Usage: chat_tmux.sh BAKEOFF_BIN MODEL_DIR WORK_DIR. Run by crates/cli/tests/serve_e2e.rs.
set -euo pipefail
bin=$1 model=$2 work=$3
session="bakeoff-chat-$$"
screen="$work/screen.txt"

cleanup() { tmux kill-session -t "$session" 2>/dev/null || true; }
trap cleanup EXIT

fail() {
    echo "chat_tmux: $*" >&2
    echo "---- screen ----" >&2
    tmux capture-pane -p -t "$session" -S - >&2 2>/dev/null || cat "$screen" >&2 || true
    exit 1
}

# Waits (up to 20 s) until the pane shows $1.
wait_for() {
    for _ in $(seq 200); do
        tmux capture-pane -p -t "$session" -S - >"$screen" 2>/dev/null || true
        if grep -qF -- "$1" "$screen"; then return 0; fi
        sleep 0.1
    done
    fail "timed out waiting for: $1"
}

# Waits (up to 20 s) until the pane shows $1 at least $2 times.
wait_count() {
    for _ in $(seq 200); do
        n=$(tmux capture-pane -p -t "$session" -S - | grep -cF -- "$1" || true)
        [ "$n" -ge "$2" ] && return 0
        sleep 0.1
    done
    fail "timed out waiting for $2 x: $1"
}

# Answers are paced (40 ms a token, 400 tokens) so that one is surely still streaming when
# Ctrl-C arrives, whatever the machine's speed.
tmux new-session -d -s "$session" -x 200 -y 50 \
    "$bin chat --model $model --max-tokens 400 --ignore-eos --pace-ms 40 --threads 1; echo CHAT-EXITED-\$?; sleep 60"
wait_for "you>"

tmux send-keys -t "$session" "Tell me a long story." Enter
sleep 1.5
tmux send-keys -t "$session" C-c
wait_for "[stopped]"
wait_for "| cancelled"
wait_for "ttft"
# Still alive: a command answers.
tmux send-keys -t "$session" "/stats" Enter
wait_for "1 turn(s)"

tmux send-keys -t "$session" "/system Answer in one word." Enter
wait_for "(system message set: Answer in one word.)"
tmux send-keys -t "$session" "And now?" Enter
sleep 1
tmux send-keys -t "$session" C-c
wait_count "[stopped]" 2
wait_count "| cancelled" 2

# Ctrl-C at the prompt does not quit either.
sleep 0.3
tmux send-keys -t "$session" C-c
wait_for "(Ctrl-C stops an answer"

tmux send-keys -t "$session" "/save $work/chat.json" Enter
wait_for "(saved 2 turn(s) to $work/chat.json)"
tmux send-keys -t "$session" "/quit" Enter
wait_for "CHAT-EXITED-0"

grep -q '"stopped": true' "$work/chat.json" || fail "the transcript does not record the stopped answers"
grep -q '"system": "Answer in one word."' "$work/chat.json" || fail "the transcript lacks the system message"
echo "chat_tmux: all checks passed"
