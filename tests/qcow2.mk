# tests of this area; fragments are included by Makefile.am
