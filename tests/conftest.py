import os
import sys

# `harness` (and the engine alias below) importable from every test directory, and the development package devkit
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dev"))
