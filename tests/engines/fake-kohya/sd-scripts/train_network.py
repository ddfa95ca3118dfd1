# Stand-in for kohya-ss/sd-scripts' train_network.py, for tests: the handler only checks that KOHYA_DIR holds
# this file. tests/engines/fake-kohya/python (KOHYA_PYTHON in tests) plays what the real script prints and
# writes; a stand-in.json beside this file sets the scenario (see tests/engines/fake-kohya/stand-in.ts).
raise SystemExit("this is the gpu-jobs test stand-in, not kohya sd-scripts")
