#!/usr/bin/env bash
# What a session with a lent GPU machine runs, in a few device calls (each under 10 minutes).
# Logs, tables and plots go under $OUT (the device tool brings that folder back).
#
#   bash perf/gpu_session.sh setup   # install the package (builds the Cython extensions), GPU facts
#   bash perf/gpu_session.sh tests   # pytest -m gpu, then the compile gate's op kernels on the device's Triton
#   bash perf/gpu_session.sh conv    # perf/bench_conv.py --gpu (Triton conv2d vs cuDNN, fp32 and bf16,
#                                    # NCHW and channels_last; the ResNet-18 training step), and
#                                    # perf/bench_embedding.py --gpu with and without the pieces
#   bash perf/gpu_session.sh rnn     # perf/bench_rnn.py --gpu (Triton recurrences vs cuDNN, full grid)
#   bash perf/gpu_session.sh rnn-modes  # the gemm mode forced where the split one runs, and its
#                                       # two-launches-a-step form (float32/bf16, B 64 and 256)
#   bash perf/gpu_session.sh rnn-latency  # per-step latency at B=1, H=512 (bf16 LSTM, the bar's
#                                         # 2x-of-the-barrier case): W_hh resident, then streamed
#                                         # over the K chunk and stages
#   bash perf/gpu_session.sh rnn-resident # W_hh on-chip (the default at B <= 16 where it fits)
#                                         # against streaming it, ours only, B 1 and 8; then
#                                         # B 32 and 64 in 16-row batch tiles (more SMs, W_hh
#                                         # on-chip) against the default one 32/64-row tile
#   bash perf/gpu_session.sh all     # all of the above (more than one call's time: use the stages)
#   bash perf/gpu_session.sh lease   # one call for a short lease (15 minutes of device time, the
#                                    # machine's start included): setup, then what is owed, most
#                                    # informative first, each part under its own time limit
#                                    # (9 minutes at most)
#
# A fresh device starts bare: run `setup` in the same call as a later stage, e.g.
#   bash perf/gpu_session.sh setup tests
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gatedrnn_gpu}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}

# STAGE_TIMEOUT (seconds, 0: none) bounds each stage's command.
stage() {
    local name=$1; shift
    echo "== $name: $*" | tee -a "$OUT/stages.log"
    local started=$SECONDS
    timeout "${STAGE_TIMEOUT:-0}" "$@" > "$OUT/$name.log" 2>&1
    local status=$?
    echo "== $name: exit $status after $((SECONDS - started)) s" | tee -a "$OUT/stages.log"
    tail -n 25 "$OUT/$name.log"
}

for step in "${@:-all}"; do
    case $step in
        setup|all)
            stage install "$PYTHON" -m pip install --no-build-isolation --no-deps -e .
            stage facts bash -c "nvidia-smi; $PYTHON -c 'import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())'"
            ;;&
        tests|all)
            stage pytest_gpu "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider -rs
            stage compile_gate "$PYTHON" perf/compile_report.py --quick
            ;;&
        conv|all)
            # NCHW tensors (the strided kernels) and channels_last ones (the NHWC kernels), and the
            # channels_last ResNet-18 training step (float32, autocast bf16); then NCHW tensors
            # copied to channels_last for the NHWC kernels (the copy's price).
            stage bench_conv_gpu "$PYTHON" perf/bench_conv.py --gpu --layout both --network \
                --json "$OUT/bench_conv_gpu.json" --plot "$OUT/bench_conv_gpu.png"
            GATEDRNN_TRITON_CONV_LAYOUT=nhwc stage bench_conv_gpu_nchw_copied "$PYTHON" \
                perf/bench_conv.py --gpu --layout nchw --json "$OUT/bench_conv_gpu_nchw_copied.json"
            # The embedding's backward with frequent rows cut into pieces, then without (PIECE
            # off): uniform, Zipf, a character model's space and one row for every lookup.
            stage bench_embedding_gpu "$PYTHON" perf/bench_embedding.py --gpu
            stage bench_embedding_gpu_no_split "$PYTHON" perf/bench_embedding.py --gpu --no-split
            ;;&
        rnn|all)
            stage bench_rnn_gpu "$PYTHON" perf/bench_rnn.py --gpu --plot "$OUT/bench_rnn_gpu.png" \
                --csv "$OUT/bench_rnn_gpu.csv"
            ;;&
        rnn-modes)
            stage bench_rnn_gemm_mode "$PYTHON" perf/bench_rnn.py --gpu --mode gemm --no-packed \
                --cells lstm,gru --dtypes float32,bfloat16 --batches 64,256 --hiddens 512,768,1024,2048 \
                --csv "$OUT/bench_rnn_gemm_mode.csv"
            stage bench_rnn_gemm_per_step "$PYTHON" perf/bench_rnn.py --gpu --mode gemm_per_step \
                --no-packed --cells lstm --dtypes float32,bfloat16 --batches 256 \
                --hiddens 768,1024,2048 --csv "$OUT/bench_rnn_gemm_per_step.csv"
            ;;
        rnn-latency)
            # W_hh on-chip (the launcher's choice here), then streamed from L2: its K loop waits
            # on L2 once a chunk, so fewer, wider chunks and more stages in flight are the knobs
            # (tuning overrides read by choose_config).
            GATEDRNN_TRITON_RESIDENT=1 stage latency_resident "$PYTHON" perf/bench_rnn.py --gpu \
                --ours-only --no-packed --cells lstm --dtypes bfloat16 --batches 1 --hiddens 512
            for block_k in 64 128 256; do
                for stages in 2 3 4; do
                    GATEDRNN_TRITON_RESIDENT=0 GATEDRNN_TRITON_BLOCK_K=$block_k \
                        GATEDRNN_TRITON_STAGES=$stages \
                        stage "latency_bk${block_k}_st${stages}" "$PYTHON" perf/bench_rnn.py --gpu \
                        --ours-only --no-packed --cells lstm --dtypes bfloat16 --batches 1 --hiddens 512
                done
            done
            grep -h "per-step latency" "$OUT"/latency_*.log
            ;;
        rnn-resident)
            for resident in 1 0; do
                GATEDRNN_TRITON_RESIDENT=$resident stage "bench_rnn_resident_$resident" "$PYTHON" \
                    perf/bench_rnn.py --gpu --ours-only --no-packed --cells lstm,gru \
                    --dtypes float32,bfloat16,float16 --batches 1,8 --hiddens 256,512,768,1024 \
                    --csv "$OUT/bench_rnn_resident_$resident.csv"
            done
            for block_b in 16 ""; do   # "": the launcher's batch tile (32 / 64 rows)
                GATEDRNN_TRITON_BLOCK_B=$block_b stage "bench_rnn_block_b${block_b:-default}" \
                    "$PYTHON" perf/bench_rnn.py --gpu --no-packed --cells lstm,gru \
                    --dtypes float32,bfloat16,float16 --batches 32,64 --hiddens 256,512,1024 \
                    --csv "$OUT/bench_rnn_block_b${block_b:-default}.csv"
            done
            ;;
        lease)
            # What a 15-minute lease can hold, most informative first: the install; the device
            # checks of what no GPU has run yet (W_hh on-chip against the oracle, every cell and
            # dtype; the bitwise repeats, the one-launch gemm mode's among them); the per-step
            # latency with W_hh on-chip and streamed; resident against streamed with cuDNN
            # beside (B 1 and 8). The rest of pytest -m gpu is the `tests` stage's, next lease.
            # The limits count Triton's compiles (about 1-2 s a kernel configuration there).
            STAGE_TIMEOUT=150 stage install "$PYTHON" -m pip install --no-build-isolation --no-deps -e .
            STAGE_TIMEOUT=180 stage pytest_gpu_new "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider \
                --maxfail=5 tests/test_gpu_rnn.py \
                -k "test_oracle_resident_weights and not streamed or stress"
            GATEDRNN_TRITON_RESIDENT=1 STAGE_TIMEOUT=45 stage latency_resident "$PYTHON" \
                perf/bench_rnn.py --gpu --ours-only --no-packed --cells lstm --dtypes bfloat16 \
                --batches 1 --hiddens 512
            GATEDRNN_TRITON_RESIDENT=0 STAGE_TIMEOUT=45 stage latency_streamed "$PYTHON" \
                perf/bench_rnn.py --gpu --ours-only --no-packed --cells lstm --dtypes bfloat16 \
                --batches 1 --hiddens 512
            for resident in 1 0; do
                GATEDRNN_TRITON_RESIDENT=$resident STAGE_TIMEOUT=60 stage "rnn_small_batch_$resident" \
                    "$PYTHON" perf/bench_rnn.py --gpu --no-packed --cells lstm,gru \
                    --dtypes float16,bfloat16,float32 --batches 1,8 --hiddens 512,1024 \
                    --csv "$OUT/rnn_small_batch_$resident.csv"
            done
            grep -h "per-step latency" "$OUT"/latency_*.log
            ;;
        setup|tests|conv|rnn|all) ;;
        *) echo "unknown stage '$step' (setup, tests, conv, rnn, rnn-modes, rnn-latency, rnn-resident, lease, all)"; exit 2 ;;
    esac
done
