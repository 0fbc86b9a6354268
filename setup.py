"""The one native part: the wire decoder (streams/contract/_wire.c). Optional: without a C
compiler the install goes on, and the worker decodes every message with upb instead."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("streams.contract._wire", ["streams/contract/_wire.c"], optional=True,
                             extra_compile_args=["-O2"])])
