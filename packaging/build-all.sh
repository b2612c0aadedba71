#!/usr/bin/env bash
# Builds and lints both packages: packaging/build-deb.sh, then packaging/build-rpm.sh (the second
# reuses the release build of the first). Prints the two package paths, .deb first.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEB=$("$HERE/build-deb.sh")
RPM=$("$HERE/build-rpm.sh")
echo "$DEB"
echo "$RPM"
