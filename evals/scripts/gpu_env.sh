# Sourced by the GPU scripts: install the wheels carried in .whl/ and any .whl-*/ folder (for a GPU
# machine with no internet) into /tmp/site, put them and the repository on PYTHONPATH, make output
# unbuffered. What travels with the code is held to 64 MiB, so the wheels are in four folders and each
# call carries the ones its script needs: .whl (the transformers stack, websockets, pytest: every
# script), .whl-fp8 (torchao: gpu_fp8.sh), .whl-media (PyAV, srt, webvtt-py: the pipeline's sources,
# writers and recorder: gpu_soak.sh, `core run`), .whl-ray (Ray and its HTTP stack, fastapi to
# opentelemetry below: gpu_cluster.sh) and .whl-qt (PySide6 for the app, below: gpu_startup.sh APP=1).
# If its image has torch 2.11 and transformers 5.17, fetch what differs, then carry .whl:
#   pip download -d .whl --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     transformers==5.24.0 huggingface_hub==2.4.0 httpx2 httpcore2 truststore \
#     qwen-vl-utils typer annotated-doc shellingham click tokenizers safetensors
# and torchao for the FP8 weights (gpu_fp8.sh; an abi3 wheel, built for manylinux_2_24/2_28):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#     -d .whl torchao==0.18.0
# and for the cluster (gpu_cluster.sh) Ray Serve and what the image lacks of its needs: ray slimmed to
# 24 MB (it is 79 MB; the tree that travels is held to 64 MiB) by evals/scripts/slim_ray_wheel.py, and
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux1_x86_64 -d .whl websockets==17.4 fastapi==0.165.0 starlette==1.10.0 \
#     pydantic==2.13.4 pydantic_core==2.46.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
#     typing-extensions==4.16.0 uvicorn==0.54.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \
#     referencing==0.37.0 rpds-py==2026.9.1 opentelemetry-api==1.45.2 grpcio-reflection==1.62.3
#   python3 -m pip download ... -d /tmp/ray ray==2.60.0 && python3 evals/scripts/slim_ray_wheel.py /tmp/ray/ray-*.whl
#   (into .whl-ray/), and for .whl-media: `pip download ... av==18.1.0` (an abi3 manylinux_2_28 wheel)
#   and `pip wheel --no-deps -w .whl-media srt webvtt-py` (pure Python, published as sources only)
# (grpcio-reflection 1.62: newer ones refuse a grpcio older than themselves, and the image's is not known.)
# .whl-qt (`python -m app` offscreen: gpu_startup.sh APP=1) holds the Qt bundle and the mss wheel, built by
#   python evals/scripts/qt_bundle.py
if compgen -G ".whl*/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl*/*.whl
  # Bytecode once, as a user's pip install writes it: the GPU image writes none at import
  # (PYTHONDONTWRITEBYTECODE), so without this every process compiled transformers' sources again, and
  # the startup runs counted ~10 s of imports for it. -j 0: all cores; compileall skips what is current.
  python3 -m compileall -q -j 0 /tmp/site > /dev/null 2>&1 || true
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
# The Qt bundle: PySide6 into /tmp/site (on PYTHONPATH through the mss wheel beside it); of the system
# libraries it brings, those the machine has its own copy of are removed, so LD_LIBRARY_PATH adds only
# what is missing there and shadows none of the machine's libraries.
if compgen -G ".whl-qt/*.tar.xz" > /dev/null; then
  for archive in .whl-qt/*.tar.xz; do tar -xJf "$archive" -C /tmp/site; done
  for lib in /tmp/site/streamvlm-qt-libs/*; do
    if ldconfig -p | awk -v name="$(basename "$lib")" '$1 == name {found = 1} END {exit !found}'; then
      rm -f "$lib"
    fi
  done
  export LD_LIBRARY_PATH=/tmp/site/streamvlm-qt-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export QT_PLUGIN_PATH=/tmp/site/PySide6/Qt/plugins FONTCONFIG_FILE=/tmp/site/streamvlm-qt-fonts/fonts.conf
  export QT_QPA_PLATFORM=${QT_QPA_PLATFORM:-offscreen}  # no display there
fi
export PYTHONUNBUFFERED=1
