#!/bin/bash
# runvm's stand-in for runc's tests/integration/get-images.sh, put in its place by
# `cargo xtask runc-bats` (xtask/src/runc_bats.rs).
#
# runc's script downloads a busybox and a Debian root filesystem tarball into testdata/
# and prints BUSYBOX_IMAGE=… and DEBIAN_IMAGE=… for helpers.bash to eval. Here both
# tarballs were made when the suite was built (busybox from Debian's busybox-static,
# Debian from debootstrap, both from this machine's Debian archive): this script only
# checks that they are there and prints the same two lines. It never downloads.

set -e -u -o pipefail

INTEGRATION_ROOT=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
TESTDATA="${INTEGRATION_ROOT}/testdata"

for image in busybox debian; do
	tarball="$TESTDATA/${image}-amd64.tar.xz"
	if [ ! -f "$tarball" ]; then
		echo "$tarball is missing: rebuild the suite with \`cargo xtask runc-bats --build-only\`" >&2
		exit 1
	fi
	var=${image}_image
	echo "${var^^}=$tarball"
done
