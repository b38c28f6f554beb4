"""The TracingPolicy compiler on kprobe and BPF-LSM hooks where the kernel has them, and buffer args."""

from __future__ import annotations

from tracing_compile_helpers import build, features, refusal

from apiary.tracing.types import ARG_BPRM, ARG_BUF, ARG_FILEPTR, ARG_INT, ARG_SOCK, ArgFilter, ArgSpec, Selector

# the kernel these tests assume where it matters: kprobes and BPF-LSM (no fentry)
VM = features(kprobes=True, lsm=True)


# --- kprobes and BPF-LSM programs where the kernel has them -------------------------------------------


def test_security_bprm_check_is_a_kprobe_where_the_kernel_has_them() -> None:
    spec = "kprobes: [{call: security_bprm_check, syscall: false, args: [{index: 0, type: linux_binprm}]}]"
    [h] = build(spec, VM).hooks
    assert (h.attach_points, h.args) == (("__kprobe_security_bprm_check",), (ArgSpec(0, ARG_BPRM, "", "linux_binprm"),))
    assert refusal(spec.replace("linux_binprm", "file"), VM).startswith(
        "unsupported: spec.kprobes[0].args[0].type (arg 0 is the program being executed (struct linux_binprm in "
        "kernel memory")


def test_lsm_file_permission_and_bprm_check_security() -> None:
    c = build("""
        lsmhooks:
        - hook: file_permission
          args: [{index: 0, type: file}, {index: 1, type: int}]
          selectors:
          - matchArgs: [{index: 0, operator: Prefix, values: [/etc/]}, {index: 1, operator: Mask, values: ["2"]}]
            matchActions: [{action: Override, argError: -13}]
        - hook: bprm_check_security
          args: [{index: 0, type: linux_binprm}]
          selectors: [{matchArgs: [{index: 0, operator: Postfix, values: [/nc]}]}]
        - hook: bprm_check_security
          args: [{index: 0, type: file}]
        """, VM)
    perm, bprm, bprm_file = c.hooks
    assert (perm.event, perm.function_name, perm.attach_points) == (
        "process_lsm", "file_permission", ("__lsm_file_permission",))
    assert perm.args == (ArgSpec(0, ARG_FILEPTR, "", "file"), ArgSpec(1, ARG_INT, "", "int"))
    assert perm.selectors == (Selector(args=(ArgFilter(0, "Prefix", ("/etc/",)), ArgFilter(1, "Mask", (2,))),
                                       action="Override", signal=13),)
    assert bprm.attach_points == ("__lsm_bprm_check_security",)
    assert bprm.args == (ArgSpec(0, ARG_FILEPTR, "", "linux_binprm"),)
    assert bprm.selectors[0].args == (ArgFilter(0, "Postfix", ("/nc",)),)
    assert bprm_file.args == (ArgSpec(0, ARG_FILEPTR, "", "file"),)
    assert c.notes[0].startswith("lsmhooks[0] file_permission: BPF-LSM hook file_permission: every permission check")
    assert refusal("lsmhooks: [{hook: bprm_check_security, args: [{index: 0, type: int}]}]", VM) == (
        "unsupported: spec.lsmhooks[0].args[0].type (arg 0 is the program being executed (struct linux_binprm, read "
        "as its file's path) here: type int cannot be realised from it (use one of file, linux_binprm))")
    # without BPF-LSM there is no realisation of file_permission
    assert refusal("lsmhooks: [{hook: file_permission}]").startswith(
        "unsupported: spec.lsmhooks[0].hook (lsm hook file_permission: needs BPF-LSM;")
    assert refusal("lsmhooks: [{hook: path_mkdir}]", VM) == (
        "unsupported: spec.lsmhooks[0].hook (lsm hook path_mkdir: apiary's sensor has no BPF-LSM program for this "
        "hook yet (it has file_open, file_permission, bprm_check_security))")


def test_kprobes_on_file_functions() -> None:
    c = build("""
        kprobes:
        - call: security_file_permission
          syscall: false
          args: [{index: 0, type: file}, {index: 1, type: int}]
          selectors: [{matchArgs: [{index: 1, operator: Equal, values: ["4"]}]}]
        - call: security_file_open
          syscall: false
          args: [{index: 0, type: file}]
        - call: fd_install
          syscall: false
          args: [{index: 0, type: int}, {index: 1, type: file}]
          selectors: [{matchArgs: [{index: 0, operator: Equal, values: ["3"]}]}]
        """, VM)
    perm, opn, fdi = c.hooks
    assert perm.attach_points == ("__kprobe_security_file_permission",)
    assert perm.args == (ArgSpec(0, ARG_FILEPTR, "", "file"), ArgSpec(1, ARG_INT, "", "int"))
    assert perm.selectors == (Selector(args=(ArgFilter(1, "Equal", (4,)),)),)  # the mask is read, not implied
    assert (opn.attach_points, opn.args) == (("__kprobe_security_file_open",), (ArgSpec(0, ARG_FILEPTR, "", "file"),))
    assert (fdi.attach_points, fdi.args) == (("__kprobe_fd_install",), (ArgSpec(0, ARG_INT, "", "int"),
                                                                   ArgSpec(1, ARG_FILEPTR, "", "file")))
    assert fdi.selectors[0].args == (ArgFilter(0, "Equal", (3,)),)  # the fd is known at fd_install
    assert "kprobes[2] fd_install: kprobe on fd_install: every new fd of the process (open, accept, pipe, dup, " \
        "socket…); the file's full path" in c.notes
    assert refusal("""
        kprobes:
        - call: security_file_open
          syscall: false
          args: [{index: 0, type: file}]
          selectors: [{matchActions: [{action: Override, argError: -1}]}]
        """, VM) == ("unsupported: spec.kprobes[0].selectors[0].matchActions[0].action (Override is supported on "
                     "BPF-LSM hooks (lsmhooks file_open, file_permission, bprm_check_security) in this version; this "
                     "hook is realised by a kprobe on security_file_open, where apiary does not inject errors (use "
                     "Sigkill))")
    assert refusal("kprobes: [{call: security_file_open, syscall: false, args: [{index: 0, type: string}]}]", VM) \
        .startswith("unsupported: spec.kprobes[0].args[0].type (arg 0 is a file (a struct file in kernel memory) "
                    "here: type string cannot be realised from it")


def test_tcp_connect_kprobe_reads_the_socket_where_the_kernel_has_kprobes() -> None:
    c = build("""
        kprobes:
        - call: tcp_connect
          syscall: false
          args: [{index: 0, type: sock}]
          selectors:
          - matchArgs:
            - {index: 0, operator: SAddr, values: ["10.0.0.0/8"]}
            - {index: 0, operator: Protocol, values: [IPPROTO_TCP]}
            - {index: 0, operator: NotDPort, values: ["443"]}
        """, VM)
    (hook,) = c.hooks
    assert hook.attach_points == ("__kprobe_tcp_connect",) and hook.args[0].kind == ARG_SOCK
    assert [(f.op, f.values) for f in hook.selectors[0].args] == [
        ("SAddr", ("10.0.0.0/8",)), ("Protocol", (6,)), ("NotDPort", (443,))]
    # without kprobes: the connect() syscall, where the source is not known yet
    assert refusal("""
        kprobes:
        - call: tcp_connect
          syscall: false
          args: [{index: 0, type: sock}]
          selectors: [{matchArgs: [{index: 0, operator: SAddr, values: ["10.0.0.0/8"]}]}]
        """).startswith("unsupported: spec.kprobes[0].selectors[0].matchArgs[0].operator (SAddr not supported: the "
                        "source address and port are not known at connect() entry")


def test_char_buf_with_size_arg_index() -> None:
    c = build("""
        kprobes:
        - call: sys_write
          args: [{index: 1, type: char_buf, sizeArgIndex: 3}]
        """)
    (a,) = c.hooks[0].args
    assert (a.kind, a.index, a.size_index) == (ARG_BUF, 1, 2)
    assert refusal("""
        kprobes:
        - call: sys_write
          args: [{index: 1, type: char_buf, sizeArgIndex: 9}]
        """).startswith("unsupported: spec.kprobes[0].args[0].sizeArgIndex (sizeArgIndex 9 (arg 8) is not an integer")


def test_return_copy_reads_the_buffer_at_return() -> None:
    c = build("""
        kprobes:
        - call: sys_read
          return: true
          args: [{index: 0, type: fd}, {index: 1, type: char_buf, returnCopy: true}]
          returnArg: {index: 0, type: int}
        """)
    buf = c.hooks[0].args[1]
    assert (buf.kind, buf.at_return) == (ARG_BUF, True) and c.hooks[0].ret is not None
    assert refusal("""
        kprobes:
        - call: sys_read
          args: [{index: 1, type: char_buf, returnCopy: true}]
        """).startswith("unsupported: spec.kprobes[0].args[0].returnCopy (returnCopy needs a char_buf arg")
    assert refusal("""
        kprobes:
        - call: sys_read
          return: true
          args: [{index: 1, type: char_buf, returnCopy: true}]
          returnArg: {index: 0, type: int}
          selectors: [{matchArgs: [{index: 1, operator: Prefix, values: [x]}]}]
        """).startswith("unsupported: spec.kprobes[0].selectors[0].matchArgs[0] (filters on a returnCopy buffer")
