/* tests/unit/api/test_ws.c -- the WebSocket hub's delivery rules without sockets: includes
 * api/ws.c and registers fake connections (no sender thread), then checks per-client and
 * broadcast delivery, message sharing, and that a full queue drops its socket (unregistered,
 * emptied, close pending) without touching the others.
 * Threads: the test thread only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "api/ws.c"

#include <unistd.h>

/* A registered socket with no CivetWeb connection and no sender thread. */
static struct ws_conn *fake_conn(struct ws_hub *h, const char *sid) {
    struct ws_conn *c = mem_calloc(1, sizeof *c);
    c->hub = h;
    c->sid = mem_strdup(sid);
    c->q = mem_calloc((size_t)h->queue_max, sizeof c->q[0]);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    pthread_mutex_lock(&h->mu);
    if (h->n == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 4;
        h->conns = mem_realloc(h->conns, (size_t)h->cap * sizeof h->conns[0]);
    }
    h->conns[h->n++] = c;
    c->registered = true;
    pthread_mutex_unlock(&h->mu);
    return c;
}

static void fake_free(struct ws_hub *h, struct ws_conn *c) {
    pthread_mutex_lock(&h->mu);
    hub_unregister_locked(h, c);
    pthread_mutex_unlock(&h->mu);
    conn_clear_queue(c);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    mem_free(c->q);
    mem_free(c->sid);
    mem_free(c);
}

/* The i-th queued message of c, as text. */
static const char *queued(const struct ws_conn *c, int i) {
    return c->q[(c->head + i) % c->hub->queue_max]->data;
}

static void test_delivery_and_drop(void **state) {
    struct ws_hub *h = ws_hub_new(NULL, 4);
    struct ws_conn *a = fake_conn(h, "alice"), *b = fake_conn(h, "bob");
    assert_int_equal(ws_hub_count(h), 2);

    ws_hub_send(h, "alice", "{\"to\": \"alice\"}", 15);
    ws_hub_send(h, NULL, "{\"to\": \"all\"}", 13);
    ws_hub_send(h, "carol", "{\"to\": \"carol\"}", 15); /* unknown sid: dropped */
    assert_int_equal(a->n, 2);
    assert_int_equal(b->n, 1);
    assert_string_equal(queued(a, 0), "{\"to\": \"alice\"}");
    assert_string_equal(queued(a, 1), "{\"to\": \"all\"}");
    assert_string_equal(queued(b, 0), "{\"to\": \"all\"}");
    /* a broadcast is one shared buffer: one reference per queue */
    assert_ptr_equal(a->q[(a->head + 1) % 4], b->q[b->head]);
    assert_int_equal(atomic_load(&b->q[b->head]->refs), 2);

    /* alice stops reading: her queue fills (4), the next message drops her, bob goes on */
    ws_hub_send(h, "alice", "3", 1);
    ws_hub_send(h, "alice", "4", 1);
    assert_int_equal(a->n, 4);
    assert_false(a->dropped);
    ws_hub_send(h, NULL, "5", 1);
    assert_true(a->dropped);
    assert_false(a->registered);
    assert_int_equal(a->n, 0);        /* emptied: nothing more is sent but the close frame */
    assert_false(a->close_sent);      /* the sender thread sends it */
    assert_int_equal(b->n, 2);
    assert_string_equal(queued(b, 1), "5");
    assert_int_equal(ws_hub_count(h), 1);
    ws_hub_send(h, "alice", "6", 1); /* no longer registered */
    assert_int_equal(a->n, 0);
    assert_int_equal(atomic_load(&b->q[b->head]->refs), 1);

    fake_free(h, a);
    fake_free(h, b);
    assert_int_equal(ws_hub_count(h), 0);
    ws_hub_free(h);
}

/* The sender writes nothing once the socket is gone; closing wakes it and it exits. */
static void test_sender_exits_on_close(void **state) {
    struct ws_hub *h = ws_hub_new(NULL, 8);
    struct ws_conn *c = fake_conn(h, "x");
    c->dead = true; /* writes would go to a NULL connection: the sender must skip them */
    assert_int_equal(pthread_create(&c->thread, NULL, conn_sender, c), 0);
    ws_hub_send(h, "x", "1", 1);
    ws_hub_send(h, NULL, "2", 1);
    for (int i = 0; i < 1000; i++) {
        pthread_mutex_lock(&c->mu);
        int n = c->n;
        pthread_mutex_unlock(&c->mu);
        if (n == 0) break;
        usleep(1000);
    }
    assert_int_equal(c->n, 0); /* popped (and discarded) */
    pthread_mutex_lock(&c->mu);
    c->closing = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    assert_int_equal(pthread_join(c->thread, NULL), 0);
    fake_free(h, c);
    ws_hub_free(h);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_delivery_and_drop),
        cmocka_unit_test(test_sender_exits_on_close),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
