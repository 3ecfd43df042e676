# qd_perception: two set-up commands on a fresh machine, `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3.11
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

# DDS never leaves loopback, in every process started from here (tests, demo, benchmarks).
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_LOCALHOST_ONLY := 1
export ROS_DOMAIN_ID ?= 57
export ROS_LOG_DIR := $(CURDIR)/.cache/ros_log
export FASTDDS_DEFAULT_PROFILES_FILE := $(CURDIR)/config/fastdds.xml
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp
export AMENT_PREFIX_PATH := $(VENV)
export CMAKE_PREFIX_PATH := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export MPLBACKEND := Agg
export OMP_NUM_THREADS ?= 2

STAMP_DEPS := $(VENV)/.deps-installed
STAMP_ROS := $(VENV)/.ros-built
PY_SOURCES := $(shell find qd_perception -name '*.py' -not -path '*/__pycache__/*' 2>/dev/null)
ROS_SOURCES := CMakeLists.txt package.xml $(wildcard msg/*.msg) $(wildcard launch/*.py) \
               $(shell find config -type f 2>/dev/null) $(PY_SOURCES)

.PHONY: help setup test test-unit test-ros lint format demo bench clean

help:
	@echo "make demo   - set everything up in .venv and run the main job on a synthetic scene"
	@echo "make test   - set everything up and run the test suite"
	@echo "make bench  - run the benchmarks (long) and update docs/benchmarks.md"
	@echo "make lint   - ruff check + format check"

$(STAMP_DEPS): requirements/core.txt requirements/ros.txt requirements/dev.txt
	@test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements/core.txt -r requirements/dev.txt
	# nuscenes-devkit pins numpy<2 but works with numpy 2: install it without its pins.
	$(PIP) install -q --no-deps nuscenes-devkit==1.2.0
	$(PIP) install -q -r requirements/ros.txt
	@touch $@

# Build the ROS 2 package (messages, Python package, node executables, launch, config) into the
# venv with plain CMake against the PyPI wheels. A full ROS 2 install uses `colcon build` instead.
$(STAMP_ROS): $(STAMP_DEPS) $(ROS_SOURCES)
	rm -rf .cache/build && mkdir -p .cache
	cmake -S . -B .cache/build -DCMAKE_INSTALL_PREFIX=$(VENV) -DPython3_EXECUTABLE=$(PY) \
	  -DBUILD_TESTING=OFF -DCMAKE_PROJECT_INCLUDE=$(CURDIR)/cmake/pypi_ros_fix.cmake > .cache/cmake-configure.log \
	  || { cat .cache/cmake-configure.log; exit 1; }
	cmake --build .cache/build -j2 > .cache/cmake-build.log || { tail -50 .cache/cmake-build.log; exit 1; }
	cmake --install .cache/build > .cache/cmake-install.log || { tail -50 .cache/cmake-install.log; exit 1; }
	@touch $@

setup: $(STAMP_ROS)
	@mkdir -p $(ROS_LOG_DIR)

test: setup
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q test/unit

test-ros: setup
	$(PY) -m pytest -q test/ros

lint: $(STAMP_DEPS)
	$(VENV)/bin/ruff check qd_perception test benchmarks launch
	$(VENV)/bin/ruff format --check qd_perception test benchmarks launch

format: $(STAMP_DEPS)
	$(VENV)/bin/ruff check --fix qd_perception test benchmarks launch
	$(VENV)/bin/ruff format qd_perception test benchmarks launch

demo: setup
	$(PY) -m qd_perception.cli demo --out .cache/demo

bench: setup
	$(PY) -m benchmarks.run_all

clean:
	rm -rf .cache
