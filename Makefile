# pq: build the static library, the tools, and run the tests.
# make            release build into bin/ (CPU backend)
# make CUDA=1     the same tools against the CUDA backend
# make check      unit + CLI tests, then again under ASan/UBSan
# make fuzz       the Jinja interpreter under libFuzzer (clang; FUZZ_TIME=300 s)
# make install PREFIX=/usr/local

PREFIX  ?= /usr/local
# All cores by default, set once, by the top-level make: the recursive makes
# of check and cuda-build share its jobserver (a -j of their own would make
# each warn "-jN forced in makefile" and start its own pool); a -j given on
# the command line wins.
ifeq ($(MAKELEVEL),0)
ifeq ($(filter -j% --jobs%,$(MAKEFLAGS)),)
MAKEFLAGS += -j$(shell nproc)
endif
endif
CUDA    ?= 0
SAN     ?= 0
CC      ?= cc
NVCC    ?= /usr/local/cuda/bin/nvcc
# H100/H200 code, and PTX that later GPUs (and A100s) compile at load time
CUDA_ARCHS ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=compute_80
PKGS    := libcjson libcurl libpcre2-8 libutf8proc openblas
CUDNN_FE ?= .deps/cudnn-frontend/include

# Build flavours live in their own directories so a sanitizer build never
# mixes objects with a release one.
ifeq ($(SAN),1)
  B      := build/san
  OPT    := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
else ifeq ($(CUDA),1)
  B      := build/cuda
  OPT    := -O3 -g -march=native
else
  B      := build/rel
  OPT    := -O3 -g -march=native
endif
BIN      := $(B)/bin

CFLAGS   := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter \
            -fopenmp -Ilib $(OPT) $(shell pkg-config --cflags $(PKGS)) $(EXTRA_CFLAGS)
LDLIBS   := $(shell pkg-config --libs $(PKGS)) -lm -lpthread
LDFLAGS  := -fopenmp $(filter -fsanitize=%,$(OPT))

LIB_SRC  := $(wildcard lib/*.c)
CU_SRC   := $(wildcard lib/cuda/*.cu)
CUCXX_SRC := $(wildcard lib/cuda/*.cpp)
TOOL_SRC := $(wildcard tools/*.c)
TEST_SRC := $(wildcard tests/unit/*.c)

LIB_OBJ  := $(LIB_SRC:%.c=$(B)/%.o)
# The backend is chosen here, not with #ifdef in tools: ops_cpu.c is the
# default implementation of lib/ops.h, lib/cuda/ the CUDA one.
# The CPU-only files of the backend (the pq_* bindings, the device stubs,
# the CPU's collectives, the oneDNN bf16 products) are left out of CUDA builds.
CPU_ONLY := backend_cpu backend_grad_cpu backend_gen_cpu backend_paged_cpu backend_optim_cpu device_cpu dist_cpu matmul_bf16
ifneq ($(CUDA),1)
  LDLIBS  += -ldnnl
endif
ifeq ($(CUDA),1)
  LIB_OBJ := $(filter-out $(CPU_ONLY:%=$(B)/lib/%.o),$(LIB_OBJ)) $(CU_SRC:%.cu=$(B)/%.o) $(CUCXX_SRC:%.cpp=$(B)/%.o)
  LDLIBS  += -L/usr/local/cuda/lib64 -Wl,-rpath,/usr/local/cuda/lib64 -lcudart -lcublas -lcublasLt -lnccl -lstdc++ -ldl
  NVFLAGS := -O3 -std=c++17 -Ilib -I/usr/local/cuda/include $(CUDA_ARCHS) $(NVEXTRA) \
             -Xcompiler -Wall,-Wextra,-Werror,-Wno-unused-parameter \
             -Werror all-warnings
  CFLAGS  += -I/usr/local/cuda/include
  # cuDNN's fused attention (lib/cuda/sdpa.cpp) through the header-only
  # cudnn-frontend (MIT) that scripts/setup installs under .deps/; without
  # it the file compiles to stubs and attention uses the tensor-core path.
  # libcudnn itself is opened at run time (dlopen), never linked.
  CXXFLAGS := -std=c++17 -O2 -Wall -Wextra -Werror -Wno-unused-parameter -Ilib -I/usr/local/cuda/include
  ifneq ($(wildcard $(CUDNN_FE)/cudnn_frontend.h),)
    CXXFLAGS += -DPQ_HAVE_CUDNN_FE -DNV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING -isystem $(CUDNN_FE)
  endif
endif
# GPU parity tests (tests/gpu/*.c): CUDA builds only, run by scripts/gpu-check.
GPU_TEST_SRC := $(wildcard tests/gpu/*.c)
GPU_TESTS    := $(GPU_TEST_SRC:tests/gpu/%.c=$(B)/gpu-tests/%)
LIBA     := $(B)/libpqcore.a
TOOLS    := $(TOOL_SRC:tools/%.c=$(BIN)/%)
TESTS    := $(TEST_SRC:tests/unit/%.c=$(B)/tests/%)
# Scripts a user runs (setup, benchmarks and GPU checks stay in the tree).
SCRIPTS  := $(addprefix scripts/,pq-pipeline pq-iterate gen-prefs fetch-model fetch-cnndm \
            plot-training plot-eval logp-parallel launch-dpo)

all: $(TOOLS) $(TESTS) bin
ifeq ($(CUDA),1)
all: $(GPU_TESTS)
endif

# bin/ is the user-facing release build.
bin: $(TOOLS)
	@mkdir -p bin && for t in $(TOOLS); do ln -sf ../$$t bin/; done

$(B)/%.o: %.c $(wildcard lib/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(B)/%.o: %.cu $(wildcard lib/*.h lib/cuda/*.cuh)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(B)/%.o: %.cpp $(wildcard lib/*.h lib/cuda/*.h)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(LIBA): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BIN)/%: $(B)/tools/%.o $(LIBA)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $< $(LIBA) $(LDLIBS) -o $@

# The unit tests' shared headers (check.h, attn_test.h).
$(TEST_SRC:%.c=$(B)/%.o): $(wildcard tests/unit/*.h)

$(B)/tests/%: $(B)/tests/unit/%.o $(LIBA)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $< $(LIBA) $(LDLIBS) -o $@

# The GPU tests' shared headers (gpu_test.h, parity_ops.h; that one includes the unit tests' act16.h).
$(GPU_TEST_SRC:%.c=$(B)/%.o): $(wildcard tests/gpu/*.h) tests/unit/act16.h

$(B)/gpu-tests/%: $(B)/tests/gpu/%.o $(LIBA)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $< $(LIBA) $(LDLIBS) -o $@

# Every CUDA source compiled and linked (no GPU needed; nothing is run): the
# whole front end and its warnings, for sm_90, with device optimisation off
# (-G): optimising the f32 attention kernels takes nvcc over 4 of make
# check's minutes and checks nothing more. Its own directory, so make CUDA=1
# never reuses these objects. Skipped where nvcc is missing. Then the cuDNN
# attention graphs are validated by cudnn-frontend (no GPU needed;
# tests/gpu/sdpa-graphs.c) where its headers are installed.
cuda-build:
	@if [ -x "$(NVCC)" ] || command -v "$(NVCC)" >/dev/null 2>&1; then \
	  $(MAKE) CUDA=1 B=build/cuda-check CUDA_ARCHS="-gencode arch=compute_90,code=sm_90" NVEXTRA=-G \
	    tools-and-tests cuda-gpu-tests || exit 1; \
	  if [ -f "$(CUDNN_FE)/cudnn_frontend.h" ]; then \
	    build/cuda-check/gpu-tests/sdpa-graphs >build/cuda-check/sdpa-graphs.log 2>&1 || \
	      { cat build/cuda-check/sdpa-graphs.log; exit 1; }; \
	    echo "cuda-build: cuDNN attention graphs: $$(tail -n 1 build/cuda-check/sdpa-graphs.log)"; \
	  else echo "cuda-build: cuDNN attention graphs not checked (no $(CUDNN_FE): scripts/setup)"; fi; \
	else echo "cuda-build: skipped ($(NVCC) not found)"; fi

cuda-gpu-tests: $(GPU_TESTS)

# make check: every test under the release build, then under ASan/UBSan.
check: all
	$(MAKE) SAN=1 tools-and-tests
	$(MAKE) cuda-build
	$(MAKE) cpu-parity
	sh tests/run build/rel build/san

tools-and-tests: $(TOOLS) $(TESTS)

install: $(TOOLS)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man7
	install -m 755 $(TOOLS) $(SCRIPTS) $(DESTDIR)$(PREFIX)/bin
	install -m 644 man/*.1 $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 644 man/*.7 $(DESTDIR)$(PREFIX)/share/man/man7

clean:
	rm -rf build bin

.PHONY: all bin check tools-and-tests cuda-build cuda-gpu-tests install clean
.SECONDARY:

# make cpu-parity: parity-ops, parity-act and parity-paged (tests/gpu) linked
# against the CPU library, tests/cpu-parity/cuda_stubs.c standing in for
# their CUDA-only calls, and run. pq_* is then pq_cpu_* behind the CPU
# backend's activation storage, so every check must pass: it checks the
# programs' own logic (the storage helpers, oracles and groups of
# tests/gpu/parity_ops.h; parity-paged's inputs, whose segments the CPU twin
# verifies) where no GPU is, never a kernel; but the paged attention there is
# the CPU backend's own (backend_paged_cpu.c), held to the oracle as a kernel is. parity-paged takes one group a
# run, with PQ_PAGED_ATTN=kernel (no cuDNN here; its timings left out).
# Part of make check (about 15 s).
ifneq ($(CUDA),1)
CPU_PARITY := parity-ops parity-act parity-paged
CPU_PARITY_RUNS := parity-ops parity-act parity-paged:append parity-paged:attention parity-paged:prefill \
                   parity-paged:sample parity-paged:logp parity-paged:act
cpu-parity: $(CPU_PARITY:%=$(B)/cpu-parity/%)
	@rc=0; for r in $(CPU_PARITY_RUNS); do \
	  p=$${r%%:*}; g=$${r#"$$p"}; g=$${g#:}; l=$(B)/cpu-parity/$$p$${g:+-$$g}.log; \
	  PQ_PAGED_ATTN=kernel $(B)/cpu-parity/$$p $$g >$$l 2>&1 || { grep -a '^FAIL' $$l; tail -n 3 $$l; rc=1; }; \
	  echo "cpu-parity: $$p$${g:+ $$g}: $$(tail -n 1 $$l)"; \
	done; exit $$rc

$(B)/cpu-parity/%: $(B)/tests/gpu/%.o $(B)/tests/cpu-parity/cuda_stubs.o $(LIBA)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -Wl,--allow-multiple-definition $(B)/tests/cpu-parity/cuda_stubs.o $< $(LIBA) $(LDLIBS) -o $@
endif

.PHONY: cpu-parity

# make fuzz: the Jinja interpreter under libFuzzer with ASan/UBSan for
# FUZZ_TIME seconds, seeded with the real templates and tests/fuzz/seeds/
# (a template, a NUL, then JSON variables); not part of make check.
FUZZ_TIME ?= 300
fuzz: build/fuzz/fuzz-jinja
	@mkdir -p build/fuzz/corpus && cp tests/fixtures/templates/*.jinja tests/fuzz/seeds/* build/fuzz/corpus/
	build/fuzz/fuzz-jinja -max_total_time=$(FUZZ_TIME) -max_len=20000 -timeout=10 -rss_limit_mb=2048 \
	    -artifact_prefix=build/fuzz/ \
	    -print_final_stats=1 build/fuzz/corpus
build/fuzz/fuzz-jinja: tests/fuzz/fuzz-jinja.c lib/jinja.c lib/jinja.h lib/util.c lib/util.h
	@mkdir -p $(dir $@)
	clang -std=c11 -D_GNU_SOURCE -g -O1 -Ilib $(shell pkg-config --cflags libcjson libutf8proc) \
	    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	    tests/fuzz/fuzz-jinja.c lib/jinja.c lib/util.c -o $@ $(shell pkg-config --libs libcjson libutf8proc) -lm
.PHONY: fuzz
