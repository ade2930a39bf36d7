# find_python 3.X: a working python3.X, whether on PATH or installed by pyenv.
find_python() {
    local version=$1 candidate
    for candidate in "python$version" "$(pyenv root 2>/dev/null)"/versions/"$version"*/bin/"python$version"; do
        if "$candidate" -c "import sys" >/dev/null 2>&1; then
            command -v "$candidate" 2>/dev/null || echo "$candidate"
            return 0
        fi
    done
    echo "no working python$version on this machine" >&2
    return 1
}
