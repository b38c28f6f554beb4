# apiary — the two commands that matter: `make run` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BUILD := build
BPF_SRC := src/apiary/bpf
BPF_HDRS := $(wildcard $(BPF_SRC)/include/*.h)
BPF_OBJS := $(patsubst $(BPF_SRC)/%.bpf.c,$(BUILD)/%.bpf.o,$(wildcard $(BPF_SRC)/*.bpf.c))
CLANG ?= clang
ARCH := $(shell uname -m | sed 's/x86_64/x86/;s/aarch64/arm64/')
BPF_CFLAGS := -O2 -g -target bpf -D__TARGET_ARCH_$(ARCH) -Wall -Werror -Wno-unused-function \
	-I$(BUILD) -I$(BPF_SRC)/include -I/usr/include/$(shell uname -m)-linux-gnu

.PHONY: run test test-vm setup build grpc examples lint unit kernel bench demo clean

run: setup build
	$(VENV)/bin/apiary agent $(ARGS)

test: lint build
	$(PY) -m pytest -q -p no:cacheprovider tests $(PYTEST_ARGS)
	APIARY_VM_KERNELS="$${APIARY_VM_KERNELS:-6.1}" bash scripts/test-vm.sh

test-vm: setup build
	APIARY_VM=required APIARY_VM_FULL=1 bash scripts/test-vm.sh

setup:
	@bash scripts/setup.sh

build: $(BPF_OBJS) examples grpc

# Hubble's and Tetragon's gRPC modules, generated from the upstream protos in proto/ (build outputs, never committed)
PROTOS := $(shell find proto -name '*.proto' | sort)
grpc: $(BUILD)/grpc/.stamp
$(BUILD)/grpc/.stamp: $(PROTOS)
	@rm -rf $(BUILD)/grpc && mkdir -p $(BUILD)/grpc
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$(BUILD)/grpc --grpc_python_out=$(BUILD)/grpc $(PROTOS)
	@touch $@

# the seed's two teaching examples (examples/seed/: BCC hello_ebpf, libbpf packet_counter), into build/seed/
examples: $(BUILD)/vmlinux.h
	@$(MAKE) --no-print-directory -C examples/seed OUT=$(abspath $(BUILD))/seed VMLINUX_DIR=$(abspath $(BUILD))

$(BUILD)/vmlinux.h:
	@mkdir -p $(BUILD)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

$(BUILD)/%.bpf.o: $(BPF_SRC)/%.bpf.c $(BPF_HDRS) $(BUILD)/vmlinux.h
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@.tmp && mv $@.tmp $@

# style (ruff), types (mypy over src/, settings in pyproject.toml) and the import layering (import-linter
# contracts in pyproject.toml: no cycles, CLI > agent > sensors > observe|tracing > kernel > policy|loader)
lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache --no-logo

unit: setup
	$(PY) -m pytest -q tests/unit

kernel: setup build
	$(PY) -m pytest -q tests/kernel

bench: setup build
	$(PY) -m bench.run $(ARGS)

clean:
	rm -rf $(BUILD)

demo: setup build
	$(PY) -m apiary.demo
