"""microvm's virtio console (virtio 1.2 §5.3): ``virtio-serial-device`` with its ports,
``virtconsole`` (the guest's ``hvc``) and ``virtserialport`` (``/dev/vportNpM``), each on a
host character device.

:mod:`.device` is the virtio backend (no pluggy), :mod:`.plugin` the hook glue,
:mod:`.constants` the numbers of ``<linux/virtio_console.h>``.
"""
