"""microvm's virtio-rng-device (virtio 1.2 §5.4): the guest's hwrng, fed by the host's getrandom()."""
