# Shared by scripts/test and scripts/demo: make .venv and install the project into it.
# Usage: ensure_venv EXTRAS   (e.g. "test,docs,e2e"); reinstalls only when packaging files change.
ensure_venv() {
  local extras=$1 stamp want files plugins=() d
  shopt -s nullglob
  files=(setup.cfg pyproject.toml examples/*/setup.cfg examples/*/pyproject.toml)
  for d in examples/*/setup.cfg; do plugins+=(-e "$(dirname "$d")"); done
  shopt -u nullglob
  if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
  fi
  stamp=.venv/.mailoauth-installed
  want="$extras $(cat "${files[@]}" | sha256sum | cut -c1-16)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "==> installing flask-mailoauth[$extras] into .venv"
    .venv/bin/python -m pip install -q -e ".[$extras]" "${plugins[@]}"
    echo "$want" > "$stamp"
  fi
}
