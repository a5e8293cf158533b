#!/usr/bin/env bash
# Builds crmvault's .deb: the binary, then the man pages and shell completions it generates from
# its own command-line definitions (never written by hand, never committed), then `cargo deb`.
#
#   packaging/build-deb.sh                  # release build (several minutes), then the .deb
#   PROFILE=dev NO_BUILD=1 packaging/build-deb.sh   # package the debug binary `cargo test` built (CI)
#
# Prints the path of the .deb on its last line. Needs cargo-deb (cargo install --locked cargo-deb).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${PROFILE:-release}
case "$profile" in
    dev) profile_dir=debug ;;
    *) profile_dir=$profile ;;
esac
target_dir=$(cargo metadata --format-version 1 --no-deps --locked | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
binary="$target_dir/$profile_dir/crmvault"

if [ "${NO_BUILD:-0}" != 1 ]; then
    cargo build --locked --profile "$profile" --bin crmvault
fi
[ -x "$binary" ] || { echo "build-deb.sh: $binary is missing; build it first or drop NO_BUILD" >&2; exit 1; }

# cargo-deb finds these under target/<profile>/packaging (Cargo.toml, [package.metadata.deb]).
generated="$target_dir/$profile_dir/packaging"
rm -rf "$generated"
mkdir -p "$generated/man" "$generated/completions"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# An empty config dir: what this machine's crmvault config holds has no say in the package.
export CRMVAULT_CONFIG_DIR="$scratch"
"$binary" generate-man "$generated/man" >/dev/null
gzip -9n "$generated"/man/*.1
"$binary" completions bash >"$generated/completions/crmvault.bash"
"$binary" completions zsh >"$generated/completions/_crmvault"
"$binary" completions fish >"$generated/completions/crmvault.fish"

# cargo-deb 3 warns that --profile dev may become an error in a later version: it is meant for
# releases. CI uses it to test the package from the test build; a release is PROFILE=release.
# --strip: cargo-deb keeps debug info when the profile asks for it (release has line tables, for
# backtraces), which made /usr/bin/crmvault 121 MB; stripped it is 21 MB (a 6.7 MB .deb).
cargo deb --no-build --locked --profile "$profile" --strip "$@" | tail -n 1
