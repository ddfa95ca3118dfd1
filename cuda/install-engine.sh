#!/bin/sh
# Installs one engine (a git checkout at a pinned commit with a virtualenv of its own) for cuda/Dockerfile:
#   install-engine <dir> <repo> <commit> "<torch packages>" "<more constraints>" <pip install args...>
# The torch packages come from TORCH_INDEX_URL (the CUDA build) and, with the other constraints, pin what the
# engine's own requirements may pull in. The checkout belongs to the app user (F5-TTS writes beside itself).
set -eux
dir=$1 repo=$2 commit=$3 torch=$4 constraints=$5
shift 5
git init -q "$dir"
cd "$dir"
git remote add origin "$repo"
git fetch -q --depth 1 origin "$commit"
git checkout -q FETCH_HEAD
python3 -m venv .venv
# shellcheck disable=SC2086 # the package lists are split on purpose
printf '%s\n' $torch $constraints > /tmp/constraints.txt
.venv/bin/pip install --no-cache-dir --upgrade pip
# shellcheck disable=SC2086
.venv/bin/pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" $torch
.venv/bin/pip install --no-cache-dir -c /tmp/constraints.txt "$@"
rm /tmp/constraints.txt
chown -R app:app "$dir"
