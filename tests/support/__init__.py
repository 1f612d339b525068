"""Everything tests share, and nothing else: fakes (students, teachers, llama.cpp, a fleet), live servers
and workers in child processes, the privacy audit, the fault harness and fleet builders. Test modules
import from here, never from one another."""
