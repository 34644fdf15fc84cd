"""Reading checkpoints: opening (local, sharded, ``.bin``, hub), tensor readers, pairing two
checkpoints tensor by tensor, dtypes, parameter-name parsing, the mask file format, synthetic
pairs, and the one chunk stream every pass over a tensor pair uses."""
