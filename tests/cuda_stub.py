"""A stand-in NVIDIA driver (``libcuda.so.1``), compiled by the tests with the system's ``gcc`` (which
``make setup`` needs anyway: sagemaker-training compiles a C extension).

It exports every ``cu*`` function the installed ``libmxnet.so`` imports (none for the CPU build),
so that MXNet loads against it, and ``cuGetProcAddress`` hands them out. Which GPUs it reports is
read at every call from ``RECSYS_STUB_GPUS``:

* unset or empty: no device; every entry point answers CUDA_ERROR_NO_DEVICE (a GPU host whose
  GPU is not visible);
* ``"7.5 Tesla T4"``, or several devices ``"7.5 Tesla T4;9.0 NVIDIA H100 80GB HBM3"``: ``cuInit``,
  ``cuDeviceGetCount``, ``cuDeviceGet``, ``cuDeviceGetName`` and ``cuDeviceGetAttribute`` (the
  compute capability, attributes 75 and 76) report those devices; every other entry point still
  answers CUDA_ERROR_NO_DEVICE.
"""

import subprocess
import textwrap
from pathlib import Path

ENV = "RECSYS_STUB_GPUS"
CUDA_ERROR_INVALID_VALUE = 1
CUDA_ERROR_NO_DEVICE = 100
CUDA_ERROR_INVALID_DEVICE = 101
CUDA_ERROR_NOT_FOUND = 500
#: The driver queries of recsys.mx.gpu_devices(), implemented from RECSYS_STUB_GPUS.
QUERIES = ("cuInit", "cuDeviceGetCount", "cuDeviceGet", "cuDeviceGetName", "cuDeviceGetAttribute")

_DEVICES = """\
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* Entry `index` of RECSYS_STUB_GPUS ("major.minor name;major.minor name"), or NULL. */
static const char *entry(int index) {{
    const char *s = getenv("{env}");
    if (s == NULL || *s == 0 || index < 0) return NULL;
    for (int i = 0; i < index; i++) {{
        s = strchr(s, ';');
        if (s == NULL) return NULL;
        s++;
    }}
    return s;
}}
static int count(void) {{ int n = 0; while (entry(n) != NULL) n++; return n; }}
static int capability(int dev, int *major, int *minor, int *name_at) {{
    const char *e = entry(dev);
    int at = 0;
    if (e == NULL || sscanf(e, "%d.%d %n", major, minor, &at) != 2) return 0;
    *name_at = at;
    return 1;
}}
int cuInit(unsigned int flags) {{ return count() ? 0 : {no_device}; }}
int cuDeviceGetCount(int *n) {{ *n = count(); return *n ? 0 : {no_device}; }}
int cuDeviceGet(int *dev, int ordinal) {{
    if (!count()) return {no_device};
    if (entry(ordinal) == NULL) return {invalid_device};
    *dev = ordinal;
    return 0;
}}
int cuDeviceGetName(char *name, int len, int dev) {{
    int major, minor, at;
    if (!count()) return {no_device};
    if (len < 1 || !capability(dev, &major, &minor, &at)) return {invalid_device};
    const char *start = entry(dev) + at, *end = strchr(start, ';');
    size_t n = end ? (size_t)(end - start) : strlen(start);
    if (n >= (size_t)len) n = (size_t)len - 1;
    memcpy(name, start, n);
    name[n] = 0;
    return 0;
}}
int cuDeviceGetAttribute(int *value, int attribute, int dev) {{
    int major, minor, at;
    if (!count()) return {no_device};
    if (!capability(dev, &major, &minor, &at)) return {invalid_device};
    if (attribute == 75) {{ *value = major; return 0; }}  /* CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR */
    if (attribute == 76) {{ *value = minor; return 0; }}  /* ..._MINOR */
    return {invalid_value};
}}
"""


def stub_source(symbols=()) -> str:
    """C source of the stub: the driver queries above, and ``symbols`` (what libmxnet.so imports)
    answering CUDA_ERROR_NO_DEVICE."""
    others = sorted(set(symbols) - set(QUERIES) | {"cuDriverGetVersion"})
    funcs = "\n".join(f"int {s}(void) {{ return {CUDA_ERROR_NO_DEVICE}; }}" for s in others)
    table = "\n".join(f'    {{"{s}", (void *){s}}},' for s in sorted(set(others) | set(QUERIES)))
    devices = _DEVICES.format(env=ENV, no_device=CUDA_ERROR_NO_DEVICE, invalid_device=CUDA_ERROR_INVALID_DEVICE,
                              invalid_value=CUDA_ERROR_INVALID_VALUE)
    return textwrap.dedent("""\
        /* A stand-in NVIDIA driver: see tests/cuda_stub.py. */
        {devices}
        {funcs}
        static const struct {{ const char *name; void *fn; }} table[] = {{
        {table}
        }};
        int cuGetProcAddress(const char *symbol, void **pfn, int version, unsigned long long flags) {{
            for (unsigned i = 0; i < sizeof(table) / sizeof(table[0]); i++)
                if (strcmp(symbol, table[i].name) == 0) {{ *pfn = table[i].fn; return 0; }}
            *pfn = 0;
            return {not_found};
        }}
        int cuGetProcAddress_v2(const char *symbol, void **pfn, int version, unsigned long long flags, void *status) {{
            return cuGetProcAddress(symbol, pfn, version, flags);
        }}
        """).format(devices=devices, funcs=funcs, table=table, not_found=CUDA_ERROR_NOT_FOUND)


def driver_imports(libmxnet: Path) -> list:
    """The ``cu*`` driver functions ``libmxnet.so`` imports (``nm -D``; none for the CPU build)."""
    out = subprocess.run(["nm", "-D", "--undefined-only", str(libmxnet)], capture_output=True, text=True,
                         check=True).stdout.split()
    return [s for s in out if s.startswith("cu") and s[2:3].isupper()]


def build(directory: Path, libmxnet: Path) -> Path:
    """Compile ``directory/libcuda.so.1`` for the installed ``libmxnet.so``; return ``directory`` (for
    ``LD_LIBRARY_PATH``)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "libcuda.c").write_text(stub_source(driver_imports(libmxnet)))
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(directory / "libcuda.so.1"),
                    str(directory / "libcuda.c")], check=True, capture_output=True, text=True)
    return directory
