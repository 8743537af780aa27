/* python.exe for the Wine harness: the python.org wheel we take the DLLs from ships no
 * launcher, and Py_Main is all python.exe does anyway.  Linked straight against
 * pythonXY.dll, so no Python.h (and none of its pyconfig.h) is needed.
 *
 * The unhandled-exception filter is there because Wine would otherwise start winedbg
 * on a crash (slow, floods the log); we print one line and exit with the exception
 * code, as Windows does with error reporting off.  Under Wine the Unix exit status is
 * only the low 8 bits of it (0xC0000005 -> 5), hence the message. */
#include <windows.h>
#include <stdio.h>
#include <wchar.h>

__declspec(dllimport) int Py_Main(int argc, wchar_t **argv);

static LONG WINAPI on_unhandled(EXCEPTION_POINTERS *info)
{
    char msg[200];
    DWORD code = info->ExceptionRecord->ExceptionCode, written;
    int n = snprintf(msg, sizeof msg,
                     "python.exe[%lu] (winepy): unhandled exception 0x%08lX at %p\r\n",
                     GetCurrentProcessId(), code, info->ExceptionRecord->ExceptionAddress);
    WriteFile(GetStdHandle(STD_ERROR_HANDLE), msg, (DWORD)n, &written, NULL);
    TerminateProcess(GetCurrentProcess(), code);
    return EXCEPTION_EXECUTE_HANDLER;
}

int wmain(int argc, wchar_t **argv)
{
    SetUnhandledExceptionFilter(on_unhandled);
    return Py_Main(argc, argv);
}
