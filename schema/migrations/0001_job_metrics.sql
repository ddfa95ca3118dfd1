CREATE TABLE "job_metrics" (
	"job_id" text NOT NULL,
	"seq" integer NOT NULL,
	"attempt" integer NOT NULL,
	"progress" double precision NOT NULL,
	"metrics" jsonb NOT NULL,
	"at" timestamp with time zone NOT NULL,
	CONSTRAINT "job_metrics_job_id_seq_pk" PRIMARY KEY("job_id","seq")
);
--> statement-breakpoint
ALTER TABLE "job_metrics" ADD CONSTRAINT "job_metrics_job_id_jobs_id_fk" FOREIGN KEY ("job_id") REFERENCES "public"."jobs"("id") ON DELETE cascade ON UPDATE no action;