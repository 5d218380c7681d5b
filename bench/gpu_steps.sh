#!/usr/bin/env bash
# The GPU measurements the open issues ask for, as named steps, each under a time limit, its log kept and its table
# printed: for a lent GPU machine whose minutes are few (start one step per call, or several that fit).
#
#   bash bench/gpu_steps.sh kernels-moe experts moe:qwen3-30b-a3b moe:glm-4.7-flash
#
# Run from the repository root with MLX's CUDA backend (and mlx-lm, the anchor) importable (bench/gpu_pack.sh says
# how to bring them onto the lent machine). Logs go to $OUT when
# set (the device tool's folder that comes back), else /tmp/mlxd-bench/gpu; random models to $MODELS, else
# /tmp/mlxd-gpu-models (a bfloat16 Qwen3-30B-A3B, 61 GB, may fit only in /dev/shm: MODELS=/dev/shm/models).
# Steps:
#   kernels-experts    the CUDA tests of the routed-experts kernels; kernels-ops those of the other kernels (decode
#                      attention, DeltaNet, routing, combining); kernels-moe every MoE block's replay and the MoE
#                      layer's. Each ~300-450 s from a cold start (NVRTC compiles each template in ~5 s; session 34's
#                      one `kernels` step passed 400 s at 131 of its 319 tests): one call each
#   few                the few-pairs experts kernel's tests alone (cuda_experts_few.py)
#   experts            bench expert_matmul: both routed-experts kernels against MLX's, per size (Qwen3-30B-A3B and
#                      gpt-oss-20b, 1-32 tokens: ~85 s); experts-float the same with bfloat16 experts (and GLM's shape);
#                      experts-large every shape at 64-256 tokens (prefill chunks, 512-2,048 pairs: the table's upper end);
#                      experts-rw2 every shape at 1-64 tokens with the few-pairs kernel at 2 weight rows a warp (64
#                      registers a thread against ~100 at 4: more blocks an SM), experts-ahead2 with a lane's next
#                      loads issued before its arithmetic (twice the bytes in flight): each also times the kernel as
#                      the module sets it, in the same process, and prints the ratio
#   moe:SHAPE          a 4-bit random model of SHAPE (random_model --bits 4; gpt-oss as published, MXFP4): the
#                      16-row step profile (CUDA kernels against MLX's ops) and 1/16-stream throughput vs mlx-lm
#   bf16:SHAPE:LAYERS  the same in bfloat16 with the first LAYERS layers (a full bf16 MoE may not fit);
#                      bf16-streams:SHAPE:LAYERS and bf16-prefill:SHAPE:LAYERS as streams: and prefill: below (issue
#                      21's bfloat16 bars: e.g. bf16-streams:glm-4.7-flash:24, bf16-streams:gemma4-26b-a4b:15)
#   streams:SHAPE      only the 1/16-stream throughput of the 4-bit model (~250-500 s), and prefill:SHAPE one stream
#                      of 2,048-token prompts (~100 s); longdecode:SHAPE the same prompts then 64 new tokens (decode
#                      at a long context)
#   constrained        issue 17: a random Llama-3.2-1B shape (CONSTRAINED_SHAPE=llama-8b: the issue's other shape,
#                      never measured before session 38) with SmolLM2's 49k-token tokenizer ($TOKENIZER, else
#                      .gpu2/smollm2-tokenizer, kept in /tmp/gpu for later calls: a folder random_model's
#                      write_tokenizer made from SmolLM2's GGUF, carried, since the lent machine cannot fetch
#                      it): constrained_decode at 1 and 16 streams, without mask processes and with
#                      $MASK_PROCESSES (3; serve --mask-processes, a daemon each,
#                      started together), then in-process 16-stream step breakdowns, constrained and free (~500 s;
#                      SCHEMA=strings or records: constrained_decode --schema, the default short-strings);
#                      constrained-decode the gRPC comparison alone (~400 s);
#                      constrained-counts only 16 streams, a daemon for each of COUNTS mask processes (default
#                      "1 2 3": fewer processes keep fewer cores busy beside the worker; each daemon's KV cache
#                      4 GB: three 8B daemons sizing their own ran an 80 GB H100 out of memory; ~300 s);
#                      constrained-timeline the constrained step's two threads timed (and its profile's top, ~60 s);
#                      constrained-processes the same timeline with the masks in $MASK_PROCESSES processes, then a
#                      free step's parts (the same table's shared rows: what only the constrained step pays, ~120 s);
#                      mask-threads whether llguidance fills 16 rows' masks in parallel on this host (bench mask_threads:
#                      at one state, then --warm: rows kept for a walk, as requests keep theirs);
#                      constrained-fills batch_inprocess --fills in one process, 16 streams: free, the schema (masks
#                      in $MASK_PROCESSES processes), and constraints allowing everything whose fill costs nothing,
#                      sleeps 2 ms or spins a core 2 ms (FILLS=...: other kinds), then the allow-all timeline (~100 s;
#                      STREAMS=N: N streams instead of 16, here and in constrained-variant);
#                      constrained-variant 16 constrained streams in-process (masks in $MASK_PROCESSES processes)
#                      against VARIANT=NAME:module.attribute=value;... in the same process, 4 rounds (e.g.
#                      nolocal:mlxd.constraints.mask_pool.KEEP_A_SHARE=False; FILL=half:schema: every other
#                      stream free, e.g. against gather:mlxd.models.ops_mlx.PAD_MASKED_ROWS=False);
#                      host-contention 16 free streams in-process with the worker pinned to a CPU and busy processes
#                      on its hyperthread sibling or on 3 other cores (bench host_contention; lscpu first; ~120 s)
#   speculate-ngram    issue 19: real SmolLM2 (its GGUF carried in pieces: bench/gpu_pack.sh) with n-gram lookup on
#                      the copy-heavy tasks and free text, 1 and 16 streams, against plain, after a warm round left
#                      out of the medians (its ratios printed: a fresh daemon's first speculative requests; ~350 s);
#                      answers end at the model's end token (IGNORE_EOS=1: at 96 tokens, sessions up to 35's measure);
#                      TASKS, STREAMS, ROUNDS narrow it; LOG_LEVEL=DEBUG: the daemon's line a step, in its log kept
#                      in $OUT/speculate-ngram (a fresh machine's warm-up alone took 245-270 s in session 41)
#   compile-watch      real SmolLM2 with n-gram lookup in-process on a fresh MLX PTX cache: the daemon's warm-up, each
#                      part timed with the kernels it compiled, then the speculative bench's tasks; every step over
#                      100 ms or compiling is listed with the kernels that appeared (bench compile_watch; ~400 s)
#   speculate-inprocess the same SmolLM2 cases in one in-process Scheduler (bench speculation_inprocess: no gRPC, with
#                      the profile of a step's parts: verify, acceptance, rollback, the policy; ~200 s); with
#                      VARIANT=NAME:module.attribute=value;... (several: space-separated) also rounds of speculation
#                      so set, in the same process;
#                      SERVED=1: each mode's one scheduler serves the cases in turn (the prior carried, as in a daemon:
#                      e.g. TASKS=rewrite,json,free SERVED=1 VARIANT=cap:mlxd.engine.speculation.NEW_ROW_CAP=0.5)
#   speculate-draft    issue 19: a random Llama-3-8B bfloat16 drafted by a random 1B (acceptance ~0: must stay >= 0.97x
#                      plain), 1 and 16 streams, the daemons' logs kept in $OUT (LOG_LEVEL=DEBUG: a line a step, its
#                      rows, width, ms and the policy's state); speculate-self the 8B as its own draft (full
#                      acceptance, but a decode step of the 8B for each drafted token: ~1x at best);
#                      speculate-oracle the mechanism's ceiling the issue's case (a) asks for: the 8B in-process,
#                      its rows drafting their own greedy continuation (bench speculation_inprocess --oracle: every
#                      draft holds, drafting costs nothing), 1 and 16 streams, DEPTH tokens a step (default 8:
#                      prompt lookup's default depth); the 8B written with random_model --echo (session 38: a
#                      random bfloat16 8B's verify and decode steps chose different tokens within a few, so its
#                      recorded continuation held for 0.12-0.48 of the drafts)
#   tp-tests           issue 23 on one GPU: tests/tensor_parallel (2 ranks over MLX's ring, both on this GPU: the
#                      tokens of one rank over gRPC, faults, parity of the sharded models); tp-probe whether NCCL runs
#                      two ranks on one GPU; tp-ring:SHAPE bench tensor_parallel on a random bfloat16 SHAPE (gpt-oss:
#                      MXFP4 experts as published), 2 ranks over the ring on this GPU against 1 (greedy tokens of 4
#                      prompts x 64, then speed: the ring's all_sums go through the host, so only the tokens count)
#   variant:SHAPE      16 streams in-process of the 4-bit model (batch_inprocess, 4 rounds; MIXED=1: mixed prompt
#                      lengths) as the code stands against VARIANT=NAME:module.attribute=value;... in the same process
#   timeline:SHAPE     16 streams in-process of the 4-bit model with a step's parts timed (batch_inprocess --timeline:
#                      the forward's graph, the launches, the wait for the step before): host- or device-bound?
#   split-keys:SHAPE   decode attention past 1,024 keys split over blocks (cuda_attention.SPLIT_KEYS): its CUDA tests,
#                      then STREAMS (default 1) streams of 2,048-token prompts, 64 new tokens, in-process, with it
#                      against without (3 interleaved rounds)
#   chunks:SHAPE       TTFT of 2,048-token prompts in-process (bench prefill_chunks) of the 4-bit model at each
#                      prefill chunk size in CHUNKS (default "512 2048"), and with VARIANT at each (e.g.
#                      noslices:mlxd.models.cuda_experts.SLICES=(): a chunk's pairs past MAX_PAIRS in MLX's
#                      kernel, not ours token slice by slice; "slices:...SLICES=(0,1,2)" in ours for bfloat16
#                      experts too); bf16-chunks:SHAPE:LAYERS the same in bfloat16 with the first LAYERS layers
#   prefill-profile:SHAPE  one 2,048-token prefill of the 4-bit model in-process, mlxd's runner against mlx-lm's model
#                      in chunks of CHUNK (default 2048), whole and without each part (bench prefill_profile; VARIANT
#                      as step-variant's); bf16-prefill-profile:SHAPE:LAYERS the same in bfloat16 (first LAYERS layers)
#   graph-ops:SHAPE    timeline:SHAPE once per MLX_MAX_OPS_PER_BUFFER in OPS (default "100 400"; MLX's CUDA backend
#                      commits a CUDA graph every that many nodes, 100 on an H100/H200): what a step's commits cost
#   pyspy:SHAPE        the same 16 streams under py-spy --native (the wheel carried in .gpu2): raw stacks in
#                      $logs/SHAPE-pyspy.txt, summarised by `python -m bench pyspy_top` where the logs come back
#   step-variant:SHAPE the 16-row step (batch_step_profile, whole step only, ROUNDS rounds, default 3) of mlxd, of
#                      mlxd with VARIANT=NAME:module.attribute=value;... (several: space-separated) and of mlx-lm,
#                      interleaved in one process
#                      (e.g. VARIANT=uncompiled:mlxd.models.ops_cuda.COMPILED_BLOCKS=False step-variant:glm-4.7-flash)
#   parts:SHAPE        the 16-row step profile with every variant (without MLP, attention, linear attention): what
#                      each part of a layer costs in mlxd's step and mlx-lm's
#   prompt-lengths     TTFT of 24 prompts each of a new length (100-1,900 tokens) on a random Llama-3-8B bfloat16,
#                      against the same with every prompt chunk's attention in MLX's fused kernel (cuDNN plans a
#                      new shape for ~37 ms); attention-plans that cost per shape alone (bench attention_plans)
#   first-requests     the first two requests of each kind after the daemon's warm-up (bench first_requests: greedy,
#                      sampled, logprobs, constrained, each also drafting; batches of 2, 8, 16 mixing them) on a
#                      random Llama-3-8B bfloat16 drafted by a random 1B (~150 s a run): a first time seconds above
#                      the second is a kernel compiled inside a request. Each run on an empty MLX PTX cache. SKIP=NAMES
#                      first a run without those warm-up parts (e.g. warm_up_sampling); SET=module.attribute=value;...
#                      last a run with those set (e.g. mlxd.models.llama.TransformerBlock.COMPILED_DECODE=True)
#   sigmoid-routing    issue 21: the sigmoid-routing kernel (cuda_moe.py, ops_cuda.SIGMOID_ROUTING, on since session 32)
#                      against MLX's ops (tests/models/test_ops_cuda.py -k routing), then mla-parts (its router row)
#   dense-rows         issue 21: bench dense_rows: GLM's dense 4-bit layers at $ROWS (1 4 16), MLX's quantized matmul
#                      on [rows, 1, in] as a batch arrives against [rows, in] (~60 s); dense-rows:SHAPE the same for
#                      SHAPE (llama-8b, llama-1b); then
#                      VARIANT='flat:mlxd.models.ops_cuda.FLAT_ROWS=True' variant:glm-4.7-flash (the whole step)
#   mla-parts          issue 21: one routed layer of a 4-bit GLM-4.7-Flash (2 layers written, ~20 s) cut into its
#                      parts, each timed alone at 16 rows, with mlxd's kernels and with MLX's ops (bench
#                      latent_layer_parts; ~60 s)
# Which experts kernel takes a size is models/cuda_experts.py's table (kernel_for). ROUNDS=N: rounds of the 1/16-stream
# throughput (default 2; one stream's rounds vary 20-30 % on the H200, so 4+ to settle a ratio near a bar).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/daemon:$PWD/clients/python:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
logs=${OUT:-/tmp/mlxd-bench/gpu}
models=${MODELS:-/tmp/mlxd-gpu-models}
py=${PYTHON:-python3}   # an interpreter with MLX's CUDA backend
# SmolLM2's tokenizer arrives in .gpu2, carried by the setup call only: kept in /tmp/gpu for the calls after it.
if [ -z "${TOKENIZER:-}" ]; then
  TOKENIZER=/tmp/gpu/smollm2-tokenizer
  if [ ! -d "$TOKENIZER" ] && [ -d .gpu2/smollm2-tokenizer ]; then
    mkdir -p /tmp/gpu && cp -r .gpu2/smollm2-tokenizer /tmp/gpu/
  fi
fi
rounds=${ROUNDS:-2}     # rounds of the 1/16-stream throughput steps (a round of one stream is ~5 s on the H200)
mkdir -p "$logs" "$models"

# MLX's compiled kernels kept from one lent machine to the next: a fresh H100 spent 269 s compiling SmolLM2's before
# measuring anything (session 41; NVRTC, ~25 s each quantized matmul). KEEP_KERNELS=1 packs MLX's PTX cache and the
# driver's (~/.nv/ComputeCache) into $logs/kernels.tgz after the steps; put it into .gpu5/ here (carried with the
# GGUF's last piece into /tmp/gpu), and a later machine's steps start from it. The steps that watch compiles
# (compile-watch, first-requests) set their own, empty.
export MLX_PTX_CACHE_DIR=${MLX_PTX_CACHE_DIR:-/tmp/gpu/ptx}
if [ -f /tmp/gpu/kernels.tgz ] && [ ! -d "$MLX_PTX_CACHE_DIR" ]; then
  mkdir -p /tmp/gpu/kept "$MLX_PTX_CACHE_DIR" ~/.nv/ComputeCache
  tar xzf /tmp/gpu/kernels.tgz -C /tmp/gpu/kept &&
    cp -r /tmp/gpu/kept/ptx/. "$MLX_PTX_CACHE_DIR"/ && cp -r /tmp/gpu/kept/nv/. ~/.nv/ComputeCache/ &&
    echo "kernels kept from an earlier machine: $(ls "$MLX_PTX_CACHE_DIR" | wc -l) files of MLX's PTX cache"
fi
keep_kernels() {
  [ -n "${KEEP_KERNELS:-}" ] || return 0
  mkdir -p ~/.nv/ComputeCache "$MLX_PTX_CACHE_DIR"
  rm -rf /tmp/gpu/pack && mkdir -p /tmp/gpu/pack &&
    ln -s "$MLX_PTX_CACHE_DIR" /tmp/gpu/pack/ptx && ln -s ~/.nv/ComputeCache /tmp/gpu/pack/nv &&
    tar czhf "$logs/kernels.tgz" -C /tmp/gpu/pack ptx nv &&
    if [ "$(stat -c %s "$logs/kernels.tgz")" -gt 15000000 ]; then  # what comes back: 16 MiB a file
      mkdir -p /tmp/gpu/pack/empty && rm /tmp/gpu/pack/nv && ln -s /tmp/gpu/pack/empty /tmp/gpu/pack/nv &&
        tar czhf "$logs/kernels.tgz" -C /tmp/gpu/pack ptx nv && echo "the driver's cache left out: too large"
    fi
  ls -l "$logs/kernels.tgz"
}
trap keep_kernels EXIT

# The lent GPU machine's Python has grpcio 1.84 and no way to fetch another; the generated stubs (grpcio-tools
# 1.85.1, as pyproject pins) refuse to import under it though nothing they use changed. There only: skip that check
# in the copies the machine holds (never where grpcio is new enough, as on any machine set up from pyproject).
# Only where grpcio imports and is older: a machine without it (or this script run by the wrong interpreter) must
# not edit the checkout's stubs (it happened: tests/test_generated_code.py caught the edited file).
if "$py" -c 'import grpc, sys; sys.exit(tuple(map(int, grpc.__version__.split(".")[:2])) >= (1, 85))' 2>/dev/null
then
  echo "grpcio $("$py" -c 'import grpc; print(grpc.__version__)') is older than the stubs': their version check skipped"
  for f in $(grep -rl "raise RuntimeError(" --include='*_grpc.py' clients daemon \
               $("$py" -c 'import grpc_health, grpc_reflection, os; print(os.path.dirname(grpc_health.__file__),
                                                                      os.path.dirname(grpc_reflection.__file__))')); do
    sed -i 's/raise RuntimeError(/(/' "$f"
  done
fi

step() {  # step NAME SECONDS COMMAND...: run it under a limit, the log in $logs/NAME.log, its last lines shown
  local name=$1 limit=$2
  shift 2
  echo "== $name"
  timeout "$limit" "$@" > "$logs/$name.log" 2>&1
  local rc=$?
  tail -n 14 "$logs/$name.log"
  [ $rc -eq 0 ] || echo "== $name: exit $rc$([ $rc -eq 124 ] && echo ' (time limit)')"
}

model() {  # model SHAPE DTYPE BITS LAYERS [TOKENIZER] -> the folder, written once (TOKENIZER: random_model's;
           # ECHO=1: random_model --echo, greedy decoding repeating the newest token)
  local out="$models/$1-$2-$3-$4${5:+-tokenizer}${ECHO:+-echo}" args=(--shape "$1" --dtype "$2")
  [ -z "${ECHO:-}" ] || args+=(--echo)
  [ "$3" = 0 ] || args+=(--bits "$3")
  [ "$4" = all ] || args+=(--layers "$4")
  [ -z "${5:-}" ] || args+=(--tokenizer "$5")
  # Written under another name and renamed when whole: a make that failed halfway leaves no folder taken as made.
  if [ ! -d "$out" ]; then
    rm -rf "$out.part"
    make_room "$out"
    "$py" -m bench random_model "${args[@]}" --out "$out.part" > "$logs/make-$1.log" 2>&1 && mv "$out.part" "$out" || {
      tail -n 5 "$logs/make-$1.log" >&2; rm -rf "$out.part"; return 1; }
  fi
  echo "$out"
}

make_room() {  # make_room FOLDER: the oldest other models removed while $models has less than ROOM_GB free
  # (default 40: the largest model a step makes, a bfloat16 MoE's first layers, is ~30 GB). Session 35's lent disk
  # (64 GiB) filled after two bfloat16 and one 4-bit MoE model, and the next step's model failed halfway.
  local free oldest
  while free=$(df --output=avail -BG "$models" | tail -n 1 | tr -dc 0-9) && [ "$free" -lt "${ROOM_GB:-40}" ]; do
    oldest=$(ls -1dtr "$models"/*/ 2>/dev/null | grep -v "^$1/$" | head -n 1)
    [ -n "$oldest" ] || break
    echo "== $free GB free: removing $oldest" >&2
    rm -rf "$oldest"
  done
}

bits() {  # bits SHAPE -> 4, or 0 for gpt-oss (its experts MXFP4 as published, the rest bf16)
  case $1 in gpt-oss*) echo 0 ;; *) echo 4 ;; esac
}

quantized() {  # quantized SHAPE -> the folder of its 4-bit model (gpt-oss: MXFP4 as published)
  model "$1" bfloat16 "$(bits "$1")" all
}

throughput() {  # throughput NAME SECONDS FOLDER ARGS...: batch_throughput of mlxd against mlx-lm
  local name=$1 limit=$2 folder=$3
  shift 3
  step "$name" "$limit" "$py" -m bench batch_throughput --model "$folder" --mlx-lm "$@"
}

streams() {  # streams NAME FOLDER: 1 and 16 streams of 128-token prompts, 128 new tokens each
  throughput "$1-streams" 560 "$2" --streams 1 16 --prompt-tokens 128 --new-tokens 128 --rounds "$rounds"
}

prefill() {  # prefill NAME FOLDER: one stream of 2,048-token prompts, 8 new tokens (the total is mostly prefill)
  throughput "$1-prefill" 300 "$2" --streams 1 --prompt-tokens 2048 --new-tokens 8 --rounds 2
}

chunks() {  # chunks NAME FOLDER: TTFT of 2,048-token prompts in-process at each chunk size in CHUNKS [and VARIANT]
  step "$1" 300 "$py" -m bench prefill_chunks --model "$2" --chunks ${CHUNKS:-512 2048} ${VARIANT:+--variant "$VARIANT"}
}

prefill_profile() {  # prefill_profile NAME FOLDER: one 2,048-token prefill, mlxd against mlx-lm, in parts [VARIANT]
  step "$1" 300 "$py" -m bench prefill_profile --model "$2" --chunk "${CHUNK:-2048}" \
    $(for v in ${VARIANT:-}; do echo "--variant $v"; done)
}

timeline() {  # timeline NAME FOLDER [VAR=VALUE...]: 16 streams in-process with a step's parts timed, in that env
  local name=$1 folder=$2
  shift 2
  step "$name" 300 env "$@" "$py" -m bench batch_inprocess --model "$folder" --streams 16 --new-tokens 128 --timeline
}

measure() {  # measure NAME FOLDER
  step "$1-step" 300 "$py" -m bench batch_step_profile --model "$2" --rows 16 --context 256 --rounds 2 \
    --also-kernels mlx --variants step
  streams "$1" "$2"
}

for spec in "$@"; do
  case $spec in
    kernels-experts) step kernels-experts 560 "$py" -m pytest -q -p no:cacheprovider \
                       tests/models/test_cuda_experts.py ;;
    kernels-ops) step kernels-ops 560 "$py" -m pytest -q -p no:cacheprovider tests/models/test_ops_cuda.py ;;
    kernels-moe) step kernels-moe 560 "$py" -m pytest -q -p no:cacheprovider tests/models/test_moe_blocks_compiled.py \
                   tests/models/test_moe.py ;;
    few) step few 400 "$py" -m pytest -q -x -p no:cacheprovider tests/models/test_cuda_experts.py -k few ;;
    experts) step experts 300 "$py" -m bench expert_matmul --tokens 1 4 16 32 --shapes qwen3-30b-a3b gpt-oss-20b ;;
    experts-float) step experts-float 300 "$py" -m bench expert_matmul --float --tokens 1 4 16 32 64 ;;
    experts-large) step experts-large 300 "$py" -m bench expert_matmul --tokens 64 128 256 ;;
    experts-rw2) step experts-rw2 300 "$py" -m bench expert_matmul --rows-per-warp 2 --tokens 1 4 16 32 64 ;;
    experts-ahead2) step experts-ahead2 300 "$py" -m bench expert_matmul --loads-ahead 2 --tokens 1 4 16 32 64 ;;
    constrained|constrained-decode) folder=$(model "${CONSTRAINED_SHAPE:-llama-1b}" bfloat16 0 all "$TOKENIZER") && {
                   step "constrained${SCHEMA:+-$SCHEMA}" 420 "$py" -m bench constrained_decode --model "$folder" \
                     --streams 1 16 --new-tokens 128 --rounds 2 --mask-processes 0 "${MASK_PROCESSES:-3}" \
                     --schema "${SCHEMA:-short-strings}"
                   if [ "$spec" = constrained ]; then
                     for kind in --constrained ""; do
                       step "constrained-steps${kind:+-constrained}" 150 "$py" -m bench batch_inprocess \
                         --model "$folder" --streams 16 --new-tokens 128 --breakdown $kind
                     done
                   fi; } ;;
    constrained-counts) folder=$(model "${CONSTRAINED_SHAPE:-llama-1b}" bfloat16 0 all "$TOKENIZER") &&
                   step constrained-counts 500 "$py" -m bench constrained_decode --model "$folder" --streams 16 \
                     --new-tokens 128 --rounds 3 --mask-processes ${COUNTS:-1 2 3} --kv-cache-mb 4096 \
                     --schema "${SCHEMA:-short-strings}" ;;
    constrained-processes) folder=$(model "${CONSTRAINED_SHAPE:-llama-1b}" bfloat16 0 all "$TOKENIZER") && {
                   step constrained-timeline-processes 150 "$py" -m bench batch_inprocess --model "$folder" \
                     --streams 16 --new-tokens 128 --constrained --timeline --mask-processes "${MASK_PROCESSES:-3}"
                   step free-timeline 150 "$py" -m bench batch_inprocess --model "$folder" --streams 16 \
                     --new-tokens 128 --timeline; } ;;
    constrained-timeline) folder=$(model "${CONSTRAINED_SHAPE:-llama-1b}" bfloat16 0 all "$TOKENIZER") &&
                   step constrained-timeline 150 "$py" -m bench batch_inprocess --model "$folder" --streams "${STREAMS:-16}" \
                     --new-tokens 128 --constrained --timeline --profile "$logs/constrained-profile.txt" ;;
    constrained-fills) folder=$(model "${CONSTRAINED_SHAPE:-llama-1b}" bfloat16 0 all "$TOKENIZER") && {
                   step constrained-fills 300 "$py" -m bench batch_inprocess --model "$folder" --streams "${STREAMS:-16}" \
                     --new-tokens 128 --rounds 3 --mask-processes "${MASK_PROCESSES:-3}" \
                     --fills "${FILLS:-free,schema,allow-all,sleep:2,spin:2}"
                   step allow-all-timeline 150 "$py" -m bench batch_inprocess --model "$folder" --streams 16 \
                     --new-tokens 128 --constrained --fill allow-all --timeline; } ;;
    constrained-variant) folder=$(model "${CONSTRAINED_SHAPE:-llama-1b}" bfloat16 0 all "$TOKENIZER") &&
                   step constrained-variant 400 "$py" -m bench batch_inprocess --model "$folder" --streams "${STREAMS:-16}" \
                     --new-tokens 128 --constrained --mask-processes "${MASK_PROCESSES:-3}" --rounds 4 \
                     --fill "${FILL:-schema}" --variant "${VARIANT:?VARIANT=NAME:module.attr=value}" ;;
    host-contention) folder=$(model llama-1b bfloat16 0 all) && { lscpu > "$logs/lscpu.txt" 2>&1
                   step host-contention 300 "$py" -m bench host_contention --model "$folder" --streams 16 \
                     --new-tokens 128 --rounds 4 --busy 3; } ;;
    tp-tests) step tp-tests 560 "$py" -m pytest -q -x -p no:cacheprovider tests/tensor_parallel ;;
    tp-probe) step tp-probe 120 "$py" -m bench tp_probe ;;
    tp-ring:*) shape=${spec#tp-ring:}; folder=$(model "$shape" "${DTYPE:-bfloat16}" 0 all) &&
               step "$shape-tp-ring" 560 "$py" -m bench tensor_parallel --model "$folder" --streams 4 --rounds 1 \
                 --new-tokens 32 --tp-arg=--tp-backend --tp-arg=ring --serve-arg=--kv-cache-mb --serve-arg=8192 \
                 --out "/tmp/mlxd-tp-ring-$shape" ;;
    mask-threads) for warm in "" --warm; do
                    step "mask-threads${warm:+-warm}" 200 "$py" -m bench mask_threads \
                      --model "$TOKENIZER" --threads 4 --states 60 $warm
                  done ;;
    speculate-ngram) smollm2=${SMOLLM2:-/tmp/gpu/SmolLM2-135M-Instruct.Q4_1.gguf}
                     [ -f "$smollm2" ] || cat /tmp/gpu/gguf.a? > "$smollm2"
                     step speculate-ngram 560 "$py" -m bench speculative --model "$smollm2" \
                       --tasks "${TASKS:-rewrite,json,free}" --max-tokens 96 --streams "${STREAMS:-1,16}" \
                       --rounds "${ROUNDS:-2}" --warm-rounds 1 ${IGNORE_EOS:+--ignore-eos} \
                       --log-level "${LOG_LEVEL:-INFO}" --out "$logs/speculate-ngram" ;;
    compile-watch) smollm2=${SMOLLM2:-/tmp/gpu/SmolLM2-135M-Instruct.Q4_1.gguf}
                   [ -f "$smollm2" ] || cat /tmp/gpu/gguf.a? > "$smollm2"
                   ptx=$(mktemp -d)
                   step compile-watch 580 env MLX_PTX_CACHE_DIR="$ptx" "$py" -m bench compile_watch --model "$smollm2" \
                     --streams "${STREAMS:-1,16}" --rounds "${ROUNDS:-1}" --max-tokens 96
                   ls -R "$ptx" > "$logs/compile-watch-kernels.txt" ;;
    speculate-inprocess) smollm2=${SMOLLM2:-/tmp/gpu/SmolLM2-135M-Instruct.Q4_1.gguf}
                     [ -f "$smollm2" ] || cat /tmp/gpu/gguf.a? > "$smollm2"
                     step speculate-inprocess "${LIMIT:-400}" "$py" -m bench speculation_inprocess --model "$smollm2" \
                       --tasks "${TASKS:-rewrite,free}" --streams "${STREAMS:-1,16}" --rounds "${ROUNDS:-3}" --profile \
                       $(for v in ${VARIANT:-}; do echo "--variant $v"; done) ${SERVED:+--served} \
                       --out "$logs/speculate-inprocess" ;;
    speculate-draft) target=$(model llama-8b bfloat16 0 all) && draft=$(model llama-1b bfloat16 0 all) &&
                     step speculate-draft 560 "$py" -m bench speculative --model "$target" --draft-model "$draft" \
                       --tasks free --max-tokens 96 --streams 1,16 --rounds "${ROUNDS:-3}" --warm-rounds 1 \
                       --log-level "${LOG_LEVEL:-INFO}" \
                       --out "$logs/speculate-draft" ;;
    speculate-oracle) target=$(ECHO=1 model llama-8b bfloat16 0 all) &&
                      step speculate-oracle 560 "$py" -m bench speculation_inprocess --model "$target" --oracle \
                        --tasks free --streams 1,16 --max-tokens 96 --rounds "${ROUNDS:-3}" --depth "${DEPTH:-8}" \
                        --out "$logs/speculate-oracle" ;;
    speculate-self) target=$(model llama-8b bfloat16 0 all) &&
                    step speculate-self 560 "$py" -m bench speculative --model "$target" --draft-model "$target" \
                      --tasks free --max-tokens 96 --streams 1,16 --rounds 2 ;;
    streams:*) shape=${spec#streams:}; folder=$(quantized "$shape") && streams "$shape" "$folder" ;;
    prefill:*) shape=${spec#prefill:}; folder=$(quantized "$shape") && prefill "$shape" "$folder" ;;
    longdecode:*) shape=${spec#longdecode:}; folder=$(quantized "$shape") &&
                 throughput "$shape-longdecode" 400 "$folder" --streams 1 --prompt-tokens 2048 --new-tokens 64 \
                   --rounds 2 ;;
    variant:*) shape=${spec#variant:}; folder=$(quantized "$shape") &&
                 step "$shape-variant" 400 "$py" -m bench batch_inprocess --model "$folder" --streams 16 \
                   --new-tokens 128 ${MIXED:+--mixed} --rounds 4 --variant "${VARIANT:?VARIANT=NAME:module.attr=value}" ;;
    prompt-lengths) folder=$(model llama-8b bfloat16 0 all) &&
                    step prompt-lengths 300 "$py" -m bench prompt_lengths --model "$folder" --prompts 24 \
                      --variant "fused:mlxd.models.ops_mlx.SMALL_SCORES=0" ;;
    first-requests) target=$(model llama-8b bfloat16 0 all) && draft=$(model llama-1b bfloat16 0 all) && {
                    first() {  # first NAME ARGS...: a run on an empty PTX cache
                      local name=$1; shift
                      step "$name" 280 env MLX_PTX_CACHE_DIR="$(mktemp -d)" "$py" -m bench first_requests \
                        --model "$target" --draft-model "$draft" "$@"
                    }
                    [ -z "${SKIP:-}" ] || first first-requests-skip --skip $SKIP
                    first first-requests
                    [ -z "${SET:-}" ] || first first-requests-set --set "$SET"
                    } ;;
    attention-plans) step attention-plans 200 "$py" -m bench attention_plans ;;
    sigmoid-routing) folder=$(model glm-4.7-flash bfloat16 4 2) &&
                     step sigmoid-routing-tests 300 "$py" -m pytest -q tests/models/test_ops_cuda.py -k routing &&
                     step sigmoid-routing-parts 200 "$py" -m bench latent_layer_parts --model "$folder" --rows 16 \
                       --context 256 ;;
    dense-rows|dense-rows:*) shape=${spec#dense-rows}; shape=${shape#:}; shape=${shape:-glm-4.7-flash}
                  step "dense-rows-$shape" 400 "$py" -m bench dense_rows --shapes "$shape" --rows ${ROWS:-1 4 16} ;;
    mla-parts) folder=$(model glm-4.7-flash bfloat16 4 2) &&
               step mla-parts 200 "$py" -m bench latent_layer_parts --model "$folder" --rows 16 --context 256 ;;
    timeline:*) shape=${spec#timeline:}; folder=$(quantized "$shape") && timeline "$shape-timeline" "$folder" ;;
    split-keys:*) shape=${spec#split-keys:}; folder=$(quantized "$shape") &&
                 step split-keys-tests 300 "$py" -m pytest -q -p no:cacheprovider tests/models/test_ops_cuda.py \
                   -k "decode_attention or latent_attention or split" &&
                 step "$shape-split-keys" 500 "$py" -m bench batch_inprocess --model "$folder" \
                   --streams "${STREAMS:-1}" --prompt-tokens 2048 --new-tokens 64 --rounds 3 \
                   --variant split:mlxd.models.cuda_attention.SPLIT_KEYS=True ;;
    graph-ops:*) shape=${spec#graph-ops:}; folder=$(quantized "$shape") &&
                 for ops in ${OPS:-100 400}; do
                   timeline "$shape-timeline-ops$ops" "$folder" MLX_MAX_OPS_PER_BUFFER="$ops"
                 done ;;
    pyspy:*) shape=${spec#pyspy:}; folder=$(quantized "$shape") &&
               step "$shape-pyspy" 300 env MLXD_BLAS_PRELOAD=none:py-spy "${PYSPY:-/tmp/site/bin/py-spy}" record \
                 --native --rate 250 --format raw --output "$logs/$shape-pyspy.txt" -- \
                 "$py" -m bench batch_inprocess --model "$folder" --streams 16 --new-tokens 128 ;;
    step-variant:*) shape=${spec#step-variant:}; folder=$(quantized "$shape") &&
               step "$shape-step-variant" 400 "$py" -m bench batch_step_profile --model "$folder" --rows 16 \
                 --context 256 --rounds "${ROUNDS:-3}" --variants step \
                 $(for v in ${VARIANT:?VARIANT=NAME:module.attr=value}; do echo "--variant $v"; done) ;;
    parts:*) shape=${spec#parts:}; folder=$(quantized "$shape") &&
               step "$shape-parts" 400 "$py" -m bench batch_step_profile --model "$folder" --rows 16 --context 256 \
                 --rounds 2 ;;
    moe:*) shape=${spec#moe:}; folder=$(quantized "$shape") && measure "$shape" "$folder" ;;
    bf16:*:*|bf16-streams:*:*|bf16-prefill:*:*|bf16-chunks:*:*|bf16-prefill-profile:*:*)
              kind=${spec%%:*}; shape=${spec#*:}; layers=${shape##*:}; shape=${shape%:*}
              folder=$(model "$shape" bfloat16 0 "$layers") || continue
              case $kind in
                bf16) measure "$shape-bf16-$layers" "$folder" ;;
                bf16-streams) streams "$shape-bf16-$layers" "$folder" ;;
                bf16-prefill) prefill "$shape-bf16-$layers" "$folder" ;;
                bf16-chunks) chunks "$shape-bf16-$layers-chunks" "$folder" ;;
                bf16-prefill-profile) prefill_profile "$shape-bf16-$layers-prefill-profile" "$folder" ;;
              esac ;;
    chunks:*) shape=${spec#chunks:}; folder=$(quantized "$shape") && chunks "$shape-chunks" "$folder" ;;
    prefill-profile:*) shape=${spec#prefill-profile:}; folder=$(quantized "$shape") &&
              prefill_profile "$shape-prefill-profile" "$folder" ;;
    *) echo "unknown step $spec (the steps are listed at the top of bench/gpu_steps.sh)" >&2
       exit 2 ;;
  esac
done
