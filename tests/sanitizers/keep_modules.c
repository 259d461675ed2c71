/* Preloaded (LD_PRELOAD) into every process of the `asan` test preset: dlclose() does nothing, so a
 * shared object stays mapped until the process exits.
 *
 * Why: Open MPI loads its components (mca_*.so) with dlopen and unloads them in MPI_Finalize. Some
 * keep allocations for the life of the process; LeakSanitizer reports them at exit, and by then the
 * component is gone, so the report's frame says "<unknown module>" and no suppression can name it.
 * With the components still mapped, the frame names its file (.../openmpi3/mca_op_avx.so) and
 * tests/lsan.supp suppresses that directory. It also lets the sanitizers record allocation stacks
 * with the fast frame-pointer unwinder: one frame into the library is enough to name it, where
 * before only full DWARF unwinding of every malloc and free (several times slower) reached a frame
 * in libmpi.so.
 *
 * Built without sanitizers so that uninstrumented processes (bash, python, mpiexec) can load it too;
 * instrumented ones reach it through the sanitizer's own dlclose interceptor (RTLD_NEXT). */
int dlclose(void* handle) {
  (void)handle;
  return 0;
}
