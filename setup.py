"""Build glue: setuptools cannot express cffi's extension builder in pyproject.toml alone.

The KVM bindings are compiled in cffi's API mode, so the C compiler (not hand-written
offsets) supplies struct layouts and ioctl numbers from <linux/kvm.h>.
"""
from setuptools import setup

setup(cffi_modules=["core/kvm/_build.py:ffibuilder"])
