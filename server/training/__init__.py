"""Central (cloud-side) training: the bootstrap model v1 and the data it is trained on."""
