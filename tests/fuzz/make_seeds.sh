#!/usr/bin/env bash
# Writes the fuzz targets' seed corpora (tests/fuzz/seeds/<target>/): small valid inputs of each
# format, made with the meshtrain binary given (default build/release/meshtrain), plus a few
# hand-written ones. The seeds are committed; rerun this only to refresh them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(realpath "${1:-$here/../../build/release/meshtrain}")
seeds=$here/seeds
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$seeds"
mkdir -p "$seeds"/{fuzz_bpe,fuzz_tokenizer_files,fuzz_token_shard,fuzz_config,fuzz_http,fuzz_checkpoint,fuzz_llmc,fuzz_safetensors}

# Text for the BPE encoder: ASCII, UTF-8, invalid UTF-8, the special token, whitespace runs.
printf 'Hello, world! The 2 quick foxes.' > "$seeds/fuzz_bpe/ascii"
printf 'héllo wörld — 日本語 ελληνικά 🙂' > "$seeds/fuzz_bpe/utf8"
printf 'bad \xff\xfe bytes \xc3 cut \xe6\x97' > "$seeds/fuzz_bpe/invalid_utf8"
printf 'a<|endoftext|>b <|endoftext|><|endoftext|>' > "$seeds/fuzz_bpe/special"
printf "  \n\n\t 's 't 're 've 'm 'll 'd  x" > "$seeds/fuzz_bpe/whitespace"

# A tiny vocabulary (8 merges) as encoder.json, NUL, vocab.bpe.
for i in 1 2 3 4 5 6 7 8; do printf 'the cat the hat the bat that\n'; done > "$work/text.txt"
"$bin" tokenizer train --vocab-size 265 --input "$work/text.txt" --output "$work/tok" > /dev/null
{ cat "$work/tok/encoder.json"; printf '\0'; cat "$work/tok/vocab.bpe"; } > "$seeds/fuzz_tokenizer_files/tiny"

# A shard of 40 tokens below 1000, and one holding the tokenizer tag in its header.
/usr/bin/python3 - "$seeds/fuzz_token_shard" <<'PY'
import struct, sys
d = sys.argv[1]
def shard(path, tokens, tag=False):
    header = [20240520, 1, len(tokens)] + [0] * 253
    if tag:
        header[3:6] = [0x544f4b31, 0x12345678, 0x0abcdef0]
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *header))
        f.write(struct.pack("<%dH" % len(tokens), *tokens))
shard(d + "/plain", [(i * 37) % 1000 for i in range(40)])
shard(d + "/tagged", [(i * 11) % 997 for i in range(25)], tag=True)
PY

# A configuration file, then --set overrides after a NUL.
printf '[model]\nn_layer = 2\nn_head = 2\nn_embd = 64\n[train]\nsteps = 10\nlr = 3e-4\nrecompute = "selective"\n[parallel]\ntp = 2\n\0train.batch_size=4\nmodel.pos_embedding=rope\n' > "$seeds/fuzz_config/file_and_sets"
printf '\0parallel.schedule=gpipe\ntrain.trace_steps=2:5\nlora.targets=qkv,fc\n' > "$seeds/fuzz_config/sets_only"

# Completion requests.
printf '{"prompt": "Once upon", "max_tokens": 8, "temperature": 0.7, "top_k": 40, "top_p": 0.9, "seed": 3}' > "$seeds/fuzz_http/full"
printf '{"prompt": "x", "stream": true, "stop": ["\\n", "END"], "repetition_penalty": 1.2, "n": 1, "model": "m"}' > "$seeds/fuzz_http/stream"
printf '{"prompt": 5}' > "$seeds/fuzz_http/bad_prompt"

# Checkpoint edits (see fuzz_checkpoint.cpp): none; one flip; a cut.
: > "$seeds/fuzz_checkpoint/none"
printf '\x00\x00\x01\x00\x00\x10' > "$seeds/fuzz_checkpoint/one_flip"
printf '\x01\x00\x08\x00\x00' > "$seeds/fuzz_checkpoint/cut"

# A tiny model in llm.c's and Hugging Face's formats.
"$bin" tokenize --tokenizer "$work/tok" --input "$work/text.txt" --output "$work/shards" --val-fraction 0 > /dev/null
"$bin" train --set data.train="$work/shards/train_*.bin" --set data.tokenizer="$work/tok" --set model.n_layer=1 \
  --set model.n_head=2 --set model.n_embd=8 --set model.seq_len=4 --set train.batch_size=1 --set train.steps=1 \
  --set train.sample_every=0 --set train.sample_tokens=1 --set train.out_dir="$work/run" > /dev/null
"$bin" ckpt convert --from meshtrain --to llmc --input "$work/run" --output "$seeds/fuzz_llmc/tiny.bin" > /dev/null
"$bin" ckpt convert --from meshtrain --to safetensors --input "$work/run" --output "$seeds/fuzz_safetensors/tiny.safetensors" > /dev/null
du -sh "$seeds"
