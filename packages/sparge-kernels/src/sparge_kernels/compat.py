"""Can this build's compiled kernels run on this GPU and driver? If not, say which wheel to install.

Checked on the first CUDA tensor per device (cuda.py), before any kernel launch, so a mismatched wheel is one
clear error instead of `no kernel image is available` from deep inside a launch, and never a silent fall back
to the reference. Pure functions of the build strings and the device facts, so the CPU tests can fake them.

Rules (CUDA's compatibility model):
- a CUDA 13 build needs a driver for CUDA >= 13; a driver for a newer major runs older builds;
- SASS `sm_XY` runs on compute capability X.Z with Z >= Y (same major); `sm_XYa` only on exactly X.Y;
- PTX `compute_XY` runs on any capability >= X.Y, JIT-compiled by the driver, which must be at least as new as
  the toolkit that wrote the PTX.
"""

from __future__ import annotations

import re

# The CUDA version of the unlabeled wheel that a plain `pip install sparge-kernels` gets; the other CUDA major
# carries a local label. ci/build_wheels.sh's WHEEL_DEFAULT_CUDA must say the same (a test checks).
DEFAULT_WHEEL_CUDA = "12.9"
WHEEL_CUDA = {12: "12.9", 13: "13.0"}  # the CUDA version each major's wheel is built with
RELEASE_ARCHS = "80, 86, 89, 90a + PTX"


def label(cuda: str) -> str:
    """'12.9' -> 'cu129' (the local version label of that CUDA build)."""
    major, minor = cuda.split(".")[:2]
    return f"cu{major}{minor}"


def wheel_for_cuda_major(major: int, version: str) -> str | None:
    """The pip requirement of the sparge-kernels wheel built for CUDA `major`, None if there is none."""
    cuda = WHEEL_CUDA.get(major)
    if cuda is None:
        return None
    public = version.split("+")[0]
    if cuda == DEFAULT_WHEEL_CUDA:
        return f"sparge-kernels=={public}"
    return f"sparge-kernels=={public}+{label(cuda)}"


def parse_archs(build_archs: str) -> tuple[list[tuple[int, int, bool]], list[tuple[int, int]]]:
    """'80,86,90a,compute_90' -> SASS [(8, 0, False), (8, 6, False), (9, 0, True)], PTX [(9, 0)]."""
    sass, ptx = [], []
    for entry in filter(None, (e.strip() for e in build_archs.split(","))):
        m = re.fullmatch(r"(compute_)?(\d+)(\d)(a?)", entry)
        if m is None:
            raise ValueError(f"unrecognised entry {entry!r} in _C.build_archs={build_archs!r}")
        major, minor = int(m.group(2)), int(m.group(3))
        if m.group(1):
            ptx.append((major, minor))
        else:
            sass.append((major, minor, bool(m.group(4))))
    return sass, ptx


def runnable_code(build_archs: str, capability: tuple[int, int]) -> str | None:
    """'sass' if a binary in the build runs on `capability`, else 'ptx' if its PTX can be JIT-compiled, else None."""
    sass, ptx = parse_archs(build_archs)
    cap_major, cap_minor = capability
    for major, minor, arch_specific in sass:
        if arch_specific and (major, minor) == capability:
            return "sass"
        if not arch_specific and major == cap_major and minor <= cap_minor:
            return "sass"
    if any((major, minor) <= capability for major, minor in ptx):
        return "ptx"
    return None


def arch_option(capability: tuple[int, int]) -> str:
    """The SPARGE_CUDA_ARCHS entry that builds for `capability` (9.0 -> 90a: the Hopper kernels need it)."""
    major, minor = capability
    return "90a" if capability == (9, 0) else f"{major}{minor}"


def check_runnable(
    *,
    build_cuda_version: str,
    build_archs: str,
    capability: tuple[int, int],
    driver_version: int,
    device_name: str,
    version: str,
) -> None:
    """Raise RuntimeError, naming the wheel to install, when this build cannot run on the device.

    driver_version is cudaDriverGetVersion's integer (12080 = CUDA 12.8); 0 means unknown and skips the driver
    checks (torch sees the GPU, so a driver is there; a real mismatch then still fails at the first launch).
    """
    build_major, build_minor = (int(x) for x in build_cuda_version.split(".")[:2])
    driver = (driver_version // 1000, driver_version % 1000 // 10) if driver_version > 0 else None
    where = f"{device_name} (compute capability {capability[0]}.{capability[1]})"
    if driver is not None and driver[0] < build_major:
        wheel = wheel_for_cuda_major(driver[0], version)
        fix = (f"install the CUDA {driver[0]} wheel: pip install '{wheel}' (README: Install)" if wheel else
               f"no sparge-kernels wheel supports CUDA {driver[0]}")
        raise RuntimeError(
            f"sparge-kernels {version} was built with CUDA {build_cuda_version}, but the NVIDIA driver for "
            f"{where} supports CUDA {driver[0]}.{driver[1]} only, so its kernels cannot load: {fix}, or update the "
            f"NVIDIA driver to one for CUDA {build_major}."
        )
    code = runnable_code(build_archs, capability)
    if code is None:
        raise RuntimeError(
            f"sparge-kernels {version} has GPU code for {build_archs} only (_C.build_archs), none of which runs on "
            f"{where}: install the release wheel (pip install '{wheel_for_cuda_major(build_major, version)}', "
            f"archs {RELEASE_ARCHS}), or build from source with SPARGE_CUDA_ARCHS={arch_option(capability)} "
            "(bash ci/setup_env.sh builds for the GPU it finds). SPARGE_BACKEND=reference runs the slow PyTorch "
            "reference instead, on purpose."
        )
    if code == "ptx" and driver is not None and driver < (build_major, build_minor):
        raise RuntimeError(
            f"sparge-kernels {version} has no binary for {where}, only PTX ({build_archs}), which the driver must "
            f"compile; the driver supports CUDA {driver[0]}.{driver[1]}, older than the CUDA {build_cuda_version} "
            f"that wrote the PTX, so it cannot. Update the NVIDIA driver, or build from source with "
            f"SPARGE_CUDA_ARCHS={arch_option(capability)}."
        )
