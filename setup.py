"""The compiled fast path is optional: without a C compiler the package installs and runs in pure Python."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("sensor._fast", ["sensor/_fast.c"], libraries=["m"], optional=True)])
