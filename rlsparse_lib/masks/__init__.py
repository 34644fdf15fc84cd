"""Update masks: operations on packed mask files and the bit kernels they run on."""
