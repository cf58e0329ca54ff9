#!/bin/sh
# The container's entrypoint: provisions the model set into the models
# volume when it is not there yet (a check of sizes otherwise, in seconds),
# then runs callbox. CALLBOX_FETCH_MODELS=0 skips the fetch, for volumes
# filled ahead of time or hosts without network.
set -e
if [ "${CALLBOX_FETCH_MODELS:-1}" != "0" ]; then
  callbox models fetch --set "${CALLBOX_MODEL_SET:-gpu}"
fi
exec callbox -v "$@"
