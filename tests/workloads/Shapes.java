// A JVM holding one heap shape per scenario, for the HPROF analysis tests. Speaks the workloads'
// protocol: prints "ready", then for each "step N" line does N units of its scenario and prints
// "ok". Usage: java -cp DIR Shapes SCENARIO; or java -cp DIR Shapes SCENARIO run N: N units every
// 20 ms until it is killed, with no input (a service that leaks as it serves).
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.net.URL;
import java.net.URLClassLoader;
import java.nio.ByteBuffer;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.LinkedBlockingQueue;

public class Shapes {
    /** A price quote, as a cache would hold it: a few fields, a small array, a string. */
    static final class Quote {
        final long id;
        final double[] history = new double[8];
        final String label;

        Quote(long id) {
            this.id = id;
            this.label = "quote-" + id;
        }
    }

    /** An event bus whose listeners are added on every request and never removed. */
    static final class Bus {
        static final Bus INSTANCE = new Bus();
        final List<Runnable> listeners = new ArrayList<>();
    }

    /** A plugin, loaded by a class loader of its own each time (a redeploy that keeps the old). */
    public static final class Plugin {
        final long[] state = new long[16];

        public Plugin() {}
    }

    static final Map<Long, Quote> CACHE = new HashMap<>();
    /** Direct buffers (native memory, outside the heap) kept per request. */
    static final List<ByteBuffer> DIRECT = new ArrayList<>();
    /** Per-thread scratch lists that a request handler fills and never clears. */
    static final ThreadLocal<List<Quote>> SCRATCH = ThreadLocal.withInitial(ArrayList::new);
    /** Plugins whose class loaders stay alive through them. */
    static final List<Object> PLUGINS = new ArrayList<>();
    static final Map<Long, Quote> CONCURRENT = new ConcurrentHashMap<>();
    static final HashSet<String> SEEN = new HashSet<>();
    static final ArrayDeque<Quote> PENDING = new ArrayDeque<>();
    static final LinkedBlockingQueue<Quote> QUEUE = new LinkedBlockingQueue<>();
    /** A bounded cache that is full from the first steps on: not a leak. */
    static final Map<Long, Quote> LRU = new LinkedHashMap<Long, Quote>(16, 0.75f, true) {
        @Override
        protected boolean removeEldestEntry(Map.Entry<Long, Quote> eldest) {
            return size() > 500;
        }
    };
    /** Built once, steady afterwards. */
    static final List<Quote> STEADY = new ArrayList<>();
    static final LinkedBlockingQueue<Integer> REQUESTS = new LinkedBlockingQueue<>();
    static final LinkedBlockingQueue<Integer> DONE = new LinkedBlockingQueue<>();
    static volatile Object sink;
    static long next;

    public static void main(String[] args) throws Exception {
        String scenario = args[0];
        if (scenario.equals("steady")) {
            for (int i = 0; i < 20000; i++) STEADY.add(new Quote(i));
        }
        if (scenario.equals("local")) {
            // A worker whose local list grows while it runs: held only by its stack.
            Thread t = new Thread(() -> {
                List<Quote> mine = new ArrayList<>();
                try {
                    while (true) {
                        int n = REQUESTS.take();
                        for (int i = 0; i < n; i++) mine.add(new Quote(next++));
                        DONE.put(n);
                    }
                } catch (InterruptedException e) {
                    sink = mine;
                }
            }, "worker");
            t.setDaemon(true);
            t.start();
        }
        if (args.length == 3 && args[1].equals("run")) {
            int n = Integer.parseInt(args[2]);
            while (true) {
                for (int i = 0; i < n; i++) unit(scenario);
                Thread.sleep(20);
            }
        }
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        System.out.println("ready");
        System.out.flush();
        String line;
        while ((line = in.readLine()) != null) {
            String[] w = line.trim().split(" ");
            if (w.length == 2 && w[0].equals("step")) {
                int n = Integer.parseInt(w[1]);
                if (scenario.equals("local")) {
                    REQUESTS.put(n);
                    DONE.take();
                } else {
                    for (int i = 0; i < n; i++) unit(scenario);
                }
            }
            System.out.println("ok");
            System.out.flush();
        }
    }

    static void unit(String scenario) {
        long id = next++;
        switch (scenario) {
            case "static-map": CACHE.put(id, new Quote(id)); break;
            case "listeners": {
                final Quote q = new Quote(id);
                Bus.INSTANCE.listeners.add(() -> sink = q);
                break;
            }
            case "concurrent": CONCURRENT.put(id, new Quote(id)); break;
            case "set": SEEN.add("seen-" + id); break;
            case "deque": PENDING.addLast(new Quote(id)); break;
            case "queue": QUEUE.add(new Quote(id)); break;
            case "bounded": LRU.put(id, new Quote(id)); break;
            case "churn": {
                List<Quote> tmp = new ArrayList<>();
                for (int i = 0; i < 50; i++) tmp.add(new Quote(id * 50 + i));
                sink = tmp;
                break;
            }
            case "steady": sink = STEADY.get((int) (id % STEADY.size())); break;
            case "threadlocal": SCRATCH.get().add(new Quote(id)); break;
            case "direct": DIRECT.add(ByteBuffer.allocateDirect(16 << 10)); break;
            case "direct-churn": sink = ByteBuffer.allocateDirect(16 << 10); break;
            case "loaders": PLUGINS.add(plugin()); break;
            case "threads": {
                // An executor started per request and never shut down: a thread parked forever,
                // held by nothing but itself.
                Thread t = new Thread(() -> {
                    try {
                        Thread.sleep(Long.MAX_VALUE);
                    } catch (InterruptedException e) {
                        // ends the thread
                    }
                }, "idle-" + id);
                t.setDaemon(true);
                t.start();
                break;
            }
            default: throw new IllegalArgumentException(scenario);
        }
    }

    /** A new Plugin from a class loader of its own (the bootstrap as parent: no delegation). */
    static Object plugin() {
        try {
            URL here = Shapes.class.getProtectionDomain().getCodeSource().getLocation();
            URLClassLoader loader = new URLClassLoader(new URL[] {here}, null);
            return loader.loadClass("Shapes$Plugin").getDeclaredConstructor().newInstance();
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException(e);
        }
    }
}
