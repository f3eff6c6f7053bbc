import os
import sys

# `harness` (and the engine alias below) importable from every test directory
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
