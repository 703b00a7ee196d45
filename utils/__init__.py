"""The library under the script and the Python API: policy, the guarded bridge, the folder loop, files."""
