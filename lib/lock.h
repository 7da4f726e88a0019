/* qemu's image locks, taken and tested the way qemu does (lock.c). */
#ifndef SPARSECOW_LOCK_H
#define SPARSECOW_LOCK_H

/* May fd's file be read?  Not while another process holds it with
 * write or resize permission (or does not share reading): -1 with
 * errno EBUSY and a message like qemu's, naming the permission.  Other
 * failures to test (no OFD locks here) count as free: 0.
 */
extern int sc_lock_check_read (int fd);
/* May the file at path be written or replaced?  Not while another
 * process uses it in any way that does not share writing (a reader
 * such as qemu-img info, a writer such as qemu-nbd): -1 with EBUSY.
 * A path that does not exist is free.
 */
extern int sc_lock_check_replace (const char *path);
/* Hold on fd's file what a qemu writer holds (permission to read,
 * write and resize, sharing neither writing nor resizing), so that
 * qemu refuses to open the image while it is written.  The locks go
 * with the open file description: closing it releases them.  Returns
 * 0 (also where the file system has no OFD locks), or -1 with EBUSY if
 * another process holds the file.
 */
extern int sc_lock_hold_write (int fd);

#endif /* SPARSECOW_LOCK_H */
