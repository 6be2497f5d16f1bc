"""Build the Cython CPU extensions (cpu/*.pyx) into the gatedrnn._cpu package.

Each ``cpu/<op>.pyx`` becomes ``gatedrnn._cpu.<op>``, compiled with -O3 and OpenMP. Metadata
lives in pyproject.toml; this file only describes the extensions.
"""
import os
import sys
from glob import glob

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _compile_args():
    if sys.platform == "win32":
        return ["/O2", "/openmp"], []
    args = ["-O3", "-fopenmp", "-ffp-contract=fast"]
    # GATEDRNN_NATIVE=0 builds portable binaries (e.g. for a wheel that runs on other CPUs);
    # by default we tune for the machine that builds, as a source install runs where it builds.
    if os.environ.get("GATEDRNN_NATIVE", "1") != "0":
        args.append("-march=native")
    return args, ["-fopenmp"]


def extensions():
    compile_args, link_args = _compile_args()
    # Shared C headers and Cython declarations: a change to one rebuilds every extension.
    shared = sorted(glob(os.path.join("cpu", "*.h")) + glob(os.path.join("cpu", "*.pxd")))
    modules = []
    for source in sorted(glob(os.path.join("cpu", "*.pyx"))):
        name = os.path.splitext(os.path.basename(source))[0]
        modules.append(
            Extension(
                f"gatedrnn._cpu.{name}",
                [source],
                depends=shared,
                include_dirs=[numpy.get_include(), os.path.join(HERE, "cpu")],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=compile_args,
                extra_link_args=link_args,
            )
        )
    return cythonize(
        modules,
        include_path=["cpu"],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


setup(ext_modules=extensions())
