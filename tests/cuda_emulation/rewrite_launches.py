#!/usr/bin/env python3
"""CUDA emulation: rewrites a .cu file into host C++ for the emulated build.

`K<<<grid, block, smem, stream>>>(args)` becomes a call of ::mt_emu::launch_config(...).run(...)
(see include/cuda_runtime.h), and `extern __shared__ ... name[];` becomes a pointer to the running
block's dynamic shared memory. Everything else is left as written; line numbers are kept so that
compiler messages point at the original file, which a #line directive names.
Usage: rewrite_launches.py INPUT.cu OUTPUT.cpp
"""
import os
import re
import sys


def kernel_start(text, end):
    """Start of the kernel expression that ends just before index end (identifier, ::, <...>)."""
    i = end
    while i > 0 and text[i - 1].isspace():
        i -= 1
    if i > 0 and text[i - 1] == '>':  # template arguments: match the angle brackets backwards
        depth = 0
        while i > 0:
            i -= 1
            if text[i] == '>':
                depth += 1
            elif text[i] == '<':
                depth -= 1
                if depth == 0:
                    break
        while i > 0 and text[i - 1].isspace():
            i -= 1
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] in '_:'):
        i -= 1
    return i


def matching(text, open_at, open_ch, close_ch):
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == open_ch:
            depth += 1
        elif text[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i
    raise SystemExit(f"rewrite_launches: unbalanced '{open_ch}' at offset {open_at}")


def rewrite(text):
    out = []
    pos = 0
    while True:
        at = text.find('<<<', pos)
        if at < 0:
            out.append(text[pos:])
            break
        start = kernel_start(text, at)
        kernel = text[start:at].strip()
        close = text.find('>>>', at)
        config = text[at + 3:close]
        paren = close + 3
        while text[paren].isspace():
            paren += 1
        if text[paren] != '(':
            raise SystemExit(f"rewrite_launches: no argument list after the launch of {kernel}")
        end = matching(text, paren, '(', ')')
        args = text[paren + 1:end]
        kept_lines = '\n' * text[start:at].count('\n') + '\n' * text[at:paren].count('\n')
        name = ' '.join(kernel.split()).replace('"', '')
        out.append(text[pos:start])
        out.append(f'::mt_emu::launch_config("{name}", {config}).run([=, mt_args = std::make_tuple({args})]() '
                   f'{{ std::apply([&](auto&... mt_a) {{ {" ".join(kernel.split())}(mt_a...); }}, mt_args); }})'
                   + kept_lines)
        pos = end + 1
    return ''.join(out)


DYNAMIC_SMEM = re.compile(r'extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([A-Za-z_][\w ]*?)\s+(\w+)\s*\[\s*\]\s*;')


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        text = f.read()
    text = DYNAMIC_SMEM.sub(lambda m: f'{m.group(1)}* {m.group(2)} = reinterpret_cast<{m.group(1)}*>('
                            f'::mt_emu::dynamic_shared_memory());', text)
    text = rewrite(text)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst, 'w') as f:
        f.write(f'#line 1 "{src}"\n' + text)


if __name__ == '__main__':
    main()
