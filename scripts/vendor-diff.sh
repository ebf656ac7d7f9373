#!/usr/bin/env bash
# Rewrites vendor/patches/<crate>.diff: each vendored crate against its crates.io release,
# so that what Trestle changed in socketioxide, engineioxide, the common parser and the
# Redis adapter (socketioxide-redis) is one readable diff per crate (vendor/README.md says
# why). Every directory under vendor/ but patches/ is a crate. Needs network access to
# crates.io. The crates' own tests/ and benches/ are pruned from the copies (never run;
# their [[test]] and [[bench]] entries would make cargo fail): they are pruned from the
# release too before diffing, so that the diffs show only Trestle's fixes.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p vendor/patches
for dir in vendor/*/; do
  name=$(basename "$dir")
  [ "$name" = patches ] && continue
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1)
  curl -sSfL "https://static.crates.io/crates/$name/$name-$version.crate" | tar -xz -C "$tmp"
  rm -rf "$tmp/$name-$version/tests" "$tmp/$name-$version/benches"
  awk '/^\[\[(test|bench)\]\]$/ {skip=1; next} /^\[/ {skip=0} !skip' "$tmp/$name-$version/Cargo.toml" \
    > "$tmp/Cargo.toml" && mv "$tmp/Cargo.toml" "$tmp/$name-$version/Cargo.toml"
  # diff exits 1 when the trees differ, which is the point
  (cd "$tmp" && diff -ruN --exclude=.cargo-ok --exclude=target "$name-$version" "$OLDPWD/vendor/$name" \
    | sed "s|$OLDPWD/vendor/$name|b|; s|^--- $name-$version|--- a|; s|^diff -ruN.*||" | sed '/^$/d' | sed -E 's/^(---|\+\+\+) ([^\t]*)\t.*/\1 \2/' \
    > "$OLDPWD/vendor/patches/$name.diff") || true
  echo "vendor/patches/$name.diff: $(grep -c '^+[^+]' "vendor/patches/$name.diff") lines added, $(grep -c '^-[^-]' "vendor/patches/$name.diff") removed"
done
