# Sourced by the GPU scripts: install the wheels carried in .whl/ (for a GPU machine with no
# internet) into /tmp/site, put them and the repository on PYTHONPATH, make output unbuffered.
# If its image has torch 2.11 and transformers 5.17, fetch what differs, then carry .whl:
#   pip download -d .whl --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     transformers==5.24.0 huggingface_hub==2.4.0 hf-xet httpx2 httpcore2 truststore \
#     qwen-vl-utils typer annotated-doc shellingham click tokenizers safetensors
# and torchao for the FP8 weights (gpu_fp8.sh; an abi3 wheel, built for manylinux_2_24/2_28):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#     -d .whl torchao==0.18.0
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
