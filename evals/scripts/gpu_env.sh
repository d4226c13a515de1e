# Sourced by the GPU scripts: install the wheels carried in .whl/ (the device image has no
# internet) into /tmp/site, put them and the repository on PYTHONPATH, make output unbuffered.
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
