#!/usr/bin/env bash
# Start a process-pool worker inside the Ascend image on one 8-device Ascend server; the image's CHIP must be the
# server's (infra/ascend/Dockerfile: 910 for an Atlas 800, 910b for an Atlas A2).
#
#   PREFECT_API_URL=http://prefect.internal:4200/api infra/ascend/run-worker.sh sknet-pipeline:ascend-910
#
# Needs on the host: the NPU driver under /usr/local/Ascend/driver, npu-smi, and a non-empty /etc/hccn.conf
# (address_N=<device IP>, written by hccn_tool when the NICs were configured).
# Host files are mounted only where they exist: `docker -v` of a missing path creates a directory there, on the
# host. npu-smi is /usr/local/bin/npu-smi or /usr/local/sbin/npu-smi depending on the driver version, so both
# directories are mounted read-only under /host, which the image's PATH ends with (as in infra/k8s/).
# Storage credentials come from the host environment (AWS_* variables) or a Prefect AwsCredentials block.
set -euo pipefail

image="${1:?usage: run-worker.sh IMAGE}"
: "${PREFECT_API_URL:?set PREFECT_API_URL to the API URL of your Prefect server}"
[[ -f /etc/hccn.conf ]] || { echo "run-worker.sh: /etc/hccn.conf not found; configure the device NICs with hccn_tool first" >&2; exit 2; }
[[ -s /etc/hccn.conf ]] || { echo "run-worker.sh: /etc/hccn.conf is empty; configure the device NICs with hccn_tool first" >&2; exit 2; }

devices=()
for n in 0 1 2 3 4 5 6 7; do
  [[ -e /dev/davinci$n ]] && devices+=(--device "/dev/davinci$n")
done
(( ${#devices[@]} > 0 )) || { echo "run-worker.sh: no /dev/davinciN devices on this host" >&2; exit 2; }
optional=()
[[ -f /etc/ascend_install.info ]] && optional+=(-v /etc/ascend_install.info:/etc/ascend_install.info:ro)

exec docker run --rm --name sknet-worker --network host --ipc host --shm-size 32g \
  "${devices[@]}" \
  --device /dev/davinci_manager --device /dev/devmm_svm --device /dev/hisi_hdc \
  -v /usr/local/Ascend/driver:/usr/local/Ascend/driver:ro \
  -v /usr/local/dcmi:/usr/local/dcmi:ro \
  -v /usr/local/sbin:/host/usr/local/sbin:ro \
  -v /usr/local/bin:/host/usr/local/bin:ro \
  -v /etc/hccn.conf:/etc/hccn.conf:ro \
  "${optional[@]}" \
  -v sknet-work:/opt/sknet-pipeline/work \
  -e PREFECT_API_URL \
  -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -e AWS_SESSION_TOKEN -e AWS_DEFAULT_REGION -e AWS_ENDPOINT_URL \
  --stop-timeout 300 \
  "$image"
