-- =============================================================================
-- crmvault benchmark: deterministic CRM data generator
--
--   psql -X -q -h 127.0.0.1 -U postgres -d bench_crm -v scale=1 -f bench/crm_generate.sql
--
-- Fills the (empty) schema created by bench/crm_schema.sql. scale=1 is about
-- 1 GiB of table data (heap + TOAST, without indexes); sizes grow linearly
-- with the scale (0.1 ~ 100 MiB, 3 ~ 3 GiB). Default scale: 1.
--
-- Deterministic: no random(), no now(). Every value is derived from the row
-- number with hashint8extended() and fixed word lists, and timestamps from
-- fixed base dates (2021-01-01 .. 2024-12-31 UTC), so the same scale always
-- produces the same rows. Rows are inserted in id order, ids are given
-- explicitly (OVERRIDING SYSTEM VALUE) and the identity sequences are moved
-- past them at the end.
--
-- The first part defines the generator functions (in pg_temp, so they vanish
-- with the session). bench/crm_day.sql includes this file with
-- -v crm_defs_only=1 to reuse them; then this file stops after the functions.
-- =============================================================================

\set ON_ERROR_STOP on
SET client_min_messages = warning;
SET max_parallel_workers_per_gather = 0;
SET TimeZone = 'UTC';

-- -----------------------------------------------------------------------------
-- Primitives
--
-- The SQL helpers are declared STABLE, not IMMUTABLE, on purpose: the planner
-- inlines them only if the body is no more volatile than declared, and some
-- bodies use STABLE functions (to_char). Inlined, a word pick is a constant
-- array subscript; not inlined, every call would cost an executor start-up.
-- -----------------------------------------------------------------------------
-- r(x, salt, n): pseudo-random integer in [0, n) derived from x and salt.
CREATE OR REPLACE FUNCTION pg_temp.r(x bigint, salt bigint, n bigint) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT (hashint8extended(x, salt) & 9223372036854775807) % n $$;

-- p(list, x, salt): pseudo-random element of list.
CREATE OR REPLACE FUNCTION pg_temp.p(a text[], x bigint, salt bigint) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT a[1 + (hashint8extended(x, salt) & 9223372036854775807) % cardinality(a)] $$;

-- ts(sec): seconds since 2021-01-01 00:00:00 UTC as timestamptz.
CREATE OR REPLACE FUNCTION pg_temp.ts(sec bigint) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT to_timestamp(1609459200 + sec) $$;

-- tsat(g, lo, hi, t0, span, salt): creation time (seconds since 2021-01-01) of
-- row g of the batch lo..hi, spread over [t0, t0 + span) and increasing with g.
-- The generator uses 2021-2024 (t0 = 0, span = 126230400), crm_day.sql one day.
CREATE OR REPLACE FUNCTION pg_temp.tsat(g bigint, lo bigint, hi bigint, t0 bigint, span bigint, salt bigint) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT t0 + ((g - lo) * span) / (hi - lo + 1) + pg_temp.r(g, salt, greatest(1, span / (hi - lo + 1))) $$;

-- ts_upd(created, delta, cap): a later change time, but not after cap.
CREATE OR REPLACE FUNCTION pg_temp.ts_upd(created bigint, delta bigint, cap bigint) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT to_timestamp(1609459200 + least(created + delta, cap)) $$;

-- ascii(s): e-mail/domain-safe lower-case form of a name.
CREATE OR REPLACE FUNCTION pg_temp.ascii(s text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT translate(lower(s), 'áàâäãåæçéèêëíìîïñóòôöõøœúùûüýÿłšžčřćńęąśźżőűğışß '' .&-/()',
                                 'aaaaaaaceeeeiiiinooooooouuuuyylszcrcneaszzougiss') $$;

-- -----------------------------------------------------------------------------
-- Word lists
-- -----------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pg_temp.first_names() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'Anna','Lukas','Sophie','Maximilian','Marie','Paul','Emma','Jonas','Mia','Leon','Hannah','Felix','Lena',
 'Elias','Laura','Noah','Julia','Finn','Sarah','Jan','Lea','Tim','Clara','Niklas','Katharina','Tobias',
 'Zoë','José','François','Chloé','Renée','Jürgen','Björn','Søren','Łukasz','Małgorzata','Ömer','Çağla',
 'Noémie','Inès','Thérèse','André','Hélène','Jérôme','Ana','João','Núria','Iñigo','Maëlle','Raphaël',
 'Oliver','Charlotte','James','Amelia','William','Olivia','Harry','Isla','George','Emily','Thomas',
 'Grace','Daniel','Jessica','Michael','Jennifer','David','Ashley','Robert','Elizabeth','Christopher',
 'Megan','Matteo','Giulia','Lorenzo','Francesca','Alessandro','Chiara','Pablo','Lucía','Javier',
 'Carmen','Sergio','Marta','Piotr','Agnieszka','Tomasz','Katarzyna','Erik','Astrid','Lars','Ingrid',
 'Mikael','Sofia','Pieter','Sanne','Daan','Fleur','Sean','Aoife','Ciarán','Niamh','Priya','Arjun',
 'Mei','Hiroshi','Yuki','Wei','Fatima','Omar','Leila','Karim','Dmitri','Olga','Nikolai','Irina'] $$;

CREATE OR REPLACE FUNCTION pg_temp.last_names() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'Müller','Schmidt','Schneider','Fischer','Weber','Meyer','Wagner','Becker','Schulz','Hoffmann','Schäfer',
 'Koch','Bauer','Richter','Klein','Wolf','Schröder','Neumann','Schwarz','Zimmermann','Braun','Krüger',
 'Hofmann','Hartmann','Lange','Schmitt','Werner','Krause','Meier','Lehmann','Günther','Köhler','Weiß',
 'Martin','Bernard','Dubois','Thomas','Robert','Richard','Petit','Durand','Lefèvre','Moreau','Fontaine',
 'García','Fernández','González','Rodríguez','López','Martínez','Sánchez','Pérez','Núñez','Ibáñez',
 'Rossi','Russo','Ferrari','Esposito','Bianchi','Romano','Colombo','Ricci','Marino','Greco','Bruno',
 'Smith','Johnson','Williams','Brown','Jones','Miller','Davis','Wilson','Anderson','Taylor','Moore',
 'Jackson','White','Harris','Clark','Lewis','Walker','Hall','Young','King','Wright','Scott','Green',
 'O''Brien','O''Connor','Murphy','Kelly','Byrne','Walsh','Ryan','McCarthy','Doyle','Gallagher',
 'Kowalski','Nowak','Wiśniewski','Wójcik','Kamiński','Lewandowski','Zieliński','Dvořák','Novák',
 'Svoboda','Horváth','Nagy','Kovács','Szabó','Jansen','de Vries','van den Berg','Bakker','Visser',
 'Smit','Andersson','Johansson','Karlsson','Nilsson','Eriksson','Larsen','Nielsen','Hansen','Pedersen',
 'Søndergaard','Jørgensen','Virtanen','Korhonen','Yılmaz','Öztürk','Demir','Papadopoulos','Silva',
 'Santos','Ferreira','Pereira','Costa','Oliveira','Tanaka','Suzuki','Chen','Wang','Patel','Sharma'] $$;

-- city | region | country | postal code prefix | phone prefix
CREATE OR REPLACE FUNCTION pg_temp.cities() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'Berlin|Berlin|DE|10|+49 30','Hamburg|Hamburg|DE|20|+49 40','München|Bayern|DE|80|+49 89',
 'Köln|Nordrhein-Westfalen|DE|50|+49 221','Frankfurt am Main|Hessen|DE|60|+49 69',
 'Stuttgart|Baden-Württemberg|DE|70|+49 711','Düsseldorf|Nordrhein-Westfalen|DE|40|+49 211',
 'Leipzig|Sachsen|DE|04|+49 341','Nürnberg|Bayern|DE|90|+49 911','Bremen|Bremen|DE|28|+49 421',
 'Wien|Wien|AT|10|+43 1','Graz|Steiermark|AT|80|+43 316','Zürich|Zürich|CH|80|+41 44',
 'Genève|Genève|CH|12|+41 22','Basel|Basel-Stadt|CH|40|+41 61','Paris|Île-de-France|FR|75|+33 1',
 'Lyon|Auvergne-Rhône-Alpes|FR|69|+33 4','Marseille|Provence-Alpes-Côte d''Azur|FR|13|+33 4',
 'Toulouse|Occitanie|FR|31|+33 5','Amsterdam|Noord-Holland|NL|10|+31 20','Rotterdam|Zuid-Holland|NL|30|+31 10',
 'Utrecht|Utrecht|NL|35|+31 30','Brussel|Brussels|BE|10|+32 2','Antwerpen|Antwerpen|BE|20|+32 3',
 'London|Greater London|GB|EC|+44 20','Manchester|Greater Manchester|GB|M1|+44 161',
 'Edinburgh|Scotland|GB|EH|+44 131','Dublin|Leinster|IE|D0|+353 1','Cork|Munster|IE|T1|+353 21',
 'Madrid|Comunidad de Madrid|ES|28|+34 91','Barcelona|Cataluña|ES|08|+34 93','València|Comunitat Valenciana|ES|46|+34 96',
 'Milano|Lombardia|IT|20|+39 02','Roma|Lazio|IT|00|+39 06','Torino|Piemonte|IT|10|+39 011',
 'Warszawa|Mazowieckie|PL|00|+48 22','Kraków|Małopolskie|PL|30|+48 12','Praha|Praha|CZ|11|+420 2',
 'Stockholm|Stockholm|SE|11|+46 8','Göteborg|Västra Götaland|SE|41|+46 31','København|Hovedstaden|DK|10|+45 3',
 'Oslo|Oslo|NO|01|+47 2','Helsinki|Uusimaa|FI|00|+358 9','Lisboa|Lisboa|PT|11|+351 21',
 'New York|NY|US|10|+1 212','Boston|MA|US|02|+1 617','Chicago|IL|US|60|+1 312','Austin|TX|US|78|+1 512',
 'San Francisco|CA|US|94|+1 415','Seattle|WA|US|98|+1 206','Toronto|ON|CA|M5|+1 416','Montréal|QC|CA|H2|+1 514'] $$;

CREATE OR REPLACE FUNCTION pg_temp.streets() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'Hauptstraße','Bahnhofstraße','Gartenweg','Lindenallee','Schillerstraße','Goethestraße','Friedrichstraße',
 'Am Marktplatz','Industriestraße','Königsallee','Rue de la République','Avenue des Champs-Élysées',
 'Rue du Faubourg Saint-Honoré','Boulevard Haussmann','Keizersgracht','Herengracht','Stationsplein',
 'High Street','Station Road','Church Lane','King''s Road','Baker Street','Victoria Street','Market Square',
 'Calle Mayor','Gran Vía','Paseo de la Castellana','Via Roma','Corso Vittorio Emanuele','Via Dante',
 'ulica Marszałkowska','Nowy Świat','Drottninggatan','Strøget','Mannerheimintie','Rua Augusta',
 'Main Street','Park Avenue','Broadway','Market Street','Congress Avenue','Elm Street','Oak Street',
 'Maple Avenue','Pine Street','Lakeshore Drive','Rue Sainte-Catherine','Technologiepark','Innovation Way'] $$;

CREATE OR REPLACE FUNCTION pg_temp.company_prefixes() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'Nordwind','Alpenblick','Bluefin','Crescent','Hansa','Rheinland','Silverline','Greenfield','Ironbridge',
 'Lakeside','Northstar','Oakridge','Pinecrest','Redwood','Riverside','Summit','Sunrise','Westbrook',
 'Brightwater','Cobalt','Evergreen','Falcon','Granite','Harbor','Horizon','Keystone','Lighthouse',
 'Maple','Meridian','Nimbus','Orion','Pioneer','Quantum','Sapphire','Skyline','Sterling','Tidewater',
 'Vanguard','Zenith','Atlas','Beacon','Cedar','Delta','Echo','Fjord','Glacier','Helix','Indigo','Juniper',
 'Kestrel','Lumen','Mosaic','Nova','Opal','Polaris','Quarry','Rover','Solstice','Triton','Umbra',
 'Vertex','Willow','Aurora','Bergmann','Côte d''Or','Élan','Lübeck','Søholm','Ørsted Park','Zürichsee',
 'Mistral','Tramontana','Sirocco','Baltic','Danube','Elbe','Loire','Tagus','Vistula','Thames'] $$;

CREATE OR REPLACE FUNCTION pg_temp.company_cores() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'Logistics','Software','Medical Devices','Consulting','Foods','Engineering','Analytics','Energy',
 'Pharma','Retail','Insurance','Capital','Robotics','Textiles','Packaging','Automotive','Media',
 'Construction','Hospitality','Telecom','Biotech','Security','Solutions','Systems','Labs','Partners',
 'Trading','Manufacturing','Holdings','Networks','Freight','Steel','Chemicals','Furniture','Optics',
 'Aerospace','Marine','Agritech','Healthcare','Learning','Travel','Brewery','Coffee Roasters','Print',
 'Design','Property','Water','Solar','Wind','Cloud'] $$;

CREATE OR REPLACE FUNCTION pg_temp.legal_forms() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'GmbH','AG','GmbH & Co. KG','Ltd','Ltd.','plc','Inc.','LLC','Corp.','SAS','SARL','S.A.','B.V.','N.V.',
 'S.L.','S.p.A.','S.r.l.','Sp. z o.o.','s.r.o.','AB','A/S','Oy','Lda.','SE'] $$;

CREATE OR REPLACE FUNCTION pg_temp.tlds() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'com','de','com','eu','io','co.uk','fr','nl','net','com','ch','at','es','it','se','com'] $$;

CREATE OR REPLACE FUNCTION pg_temp.industries() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'Software','Manufacturing','Logistics & Transport','Healthcare','Financial Services','Retail',
 'Wholesale','Construction','Energy & Utilities','Telecommunications','Education','Hospitality',
 'Media & Publishing','Professional Services','Automotive','Pharmaceuticals','Food & Beverage',
 'Real Estate','Public Sector','Non-profit','Insurance','Agriculture','Aerospace & Defence','Chemicals'] $$;

CREATE OR REPLACE FUNCTION pg_temp.job_titles() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'CEO','CFO','CTO','COO','Head of Sales','Head of IT','IT Director','Procurement Manager','Purchasing Lead',
 'Office Manager','Operations Manager','Marketing Director','Marketing Manager','Sales Manager',
 'Account Manager','Key Account Manager','Project Manager','Product Owner','Software Engineer',
 'Data Analyst','Controller','Head of Finance','HR Manager','Head of Customer Service','Team Lead Support',
 'Managing Director','Geschäftsführer','Directeur commercial','Responsable achats','Jefe de compras',
 'Responsabile IT','Business Analyst','Solutions Architect','VP Engineering','VP Sales','Legal Counsel',
 'Compliance Officer','Data Protection Officer','Assistant to the CEO','Facility Manager','Buyer',
 'Category Manager','Logistics Coordinator','Plant Manager','Quality Manager','Head of Digital'] $$;

CREATE OR REPLACE FUNCTION pg_temp.tags() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'vip','newsletter','decision-maker','influencer','champion','technical','billing','partner','reseller',
 'event-2023','event-2024','webinar','trade-show','churn-risk','upsell','renewal-q1','renewal-q3',
 'do-not-call','gdpr-consent','beta-tester','reference-customer','enterprise','smb','mid-market',
 'dach','benelux','nordics','uk-ie','iberia','north-america'] $$;

CREATE OR REPLACE FUNCTION pg_temp.lead_sources() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'website','referral','trade show','webinar','cold call','LinkedIn','partner','Google Ads','newsletter',
 'inbound e-mail','event','existing customer'] $$;

CREATE OR REPLACE FUNCTION pg_temp.topics() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'the renewal','the pricing proposal','the SSO integration','the data migration','the onboarding plan',
 'API rate limits','the Q3 forecast','the contract terms','the security questionnaire','GDPR compliance',
 'the pilot project','the rollout schedule','user training','the support SLA','the invoice dispute',
 'the upgrade to Enterprise','additional seats','the reference call','the case study','the budget for next year',
 'the integration with SAP','the Outlook add-in','the mobile app','reporting requirements','the data processing agreement',
 'the kickoff meeting','the proof of concept','the RFP','the annual review','payment terms','the multi-year discount',
 'the new pricing model','the roadmap','custom fields','the CSV import','duplicate records','the sandbox environment',
 'the penetration test','SOC 2 documentation','the hosting region','data retention','the export API',
 'the webhook setup','the Salesforce migration','the go-live date','the training schedule','the partner program',
 'the trade show booth','the product demo','license compliance','the escalation process','the quarterly business review',
 'the change request','the service credits','the termination clause','the expansion to the Nordics',
 'the French subsidiary','the shared inbox','e-mail tracking','the lead scoring model'] $$;

CREATE OR REPLACE FUNCTION pg_temp.products() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'CRM Cloud Enterprise','CRM Cloud Professional','CRM Cloud Starter','Sales Hub Pro','Service Desk Plus',
 'Marketing Suite','Analytics Add-on','Data Connector for SAP','Data Connector for DATEV','Mobile Field Sales',
 'Customer Portal','Premium Support','Sandbox License','API Access Tier 2','Document Signing Add-on',
 'Telephony Integration','AI Assistant','Backup & Archive','Training Package (5 days)','Onboarding Package'] $$;

CREATE OR REPLACE FUNCTION pg_temp.roles() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'the procurement lead','their CFO','the head of IT','our champion','the operations manager','legal',
 'their data protection officer','the managing director','the project lead','the sales director',
 'their IT security team','the works council','the finance team','the new CTO','the customer service manager',
 'the marketing team','the regional manager','their system integrator','the board','the key user group',
 'the purchasing department','the controller','our solutions engineer','our account executive',
 'the implementation partner','the support team lead','the HR department','their external consultant',
 'the plant manager','the owner'] $$;

CREATE OR REPLACE FUNCTION pg_temp.verbs() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'review','update','send','prepare','confirm','escalate','finalize','share','double-check','sign off on',
 'translate','simplify','revise','forward','countersign','summarize','present','walk through','clarify',
 'resend','correct','approve','re-price','extend','renegotiate','validate','document','attach','upload',
 'schedule','circulate','benchmark','follow up on','chase','align on','discuss','rework','split','merge',
 'archive'] $$;

CREATE OR REPLACE FUNCTION pg_temp.docs() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'quote','proposal','MSA','SOW','invoice','order form','renewal terms','implementation plan','DPA',
 'roadmap deck','price list','security whitepaper','reference list','project plan','training agenda',
 'meeting minutes','credit note','contract draft','NDA','SLA document','technical specification',
 'migration checklist','license overview','ROI calculation','case study','demo recording','user guide',
 'release notes','architecture diagram','questionnaire','purchase order','budget sheet','change request',
 'test report','cutover plan','org chart','onboarding checklist','feature comparison','TCO analysis',
 'support handbook'] $$;

CREATE OR REPLACE FUNCTION pg_temp.adjs() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'revised','updated','final','signed','detailed','draft','annual','corrected','short','complete',
 'preliminary','new','translated','redlined','approved','pending','quarterly','customized','standard',
 'extended','condensed','official','internal','scanned','second','latest','cleaned-up','agreed','shared',
 'reworked'] $$;

CREATE OR REPLACE FUNCTION pg_temp.outcomes() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'they want a revised quote by Friday','legal is still reviewing the MSA','budget approval is expected next month',
 'they need sign-off from the board','the decision has been postponed to next quarter','they are comparing us with two other vendors',
 'they asked for a reference customer in their industry','the champion is leaving the company','procurement wants a 15% discount',
 'they are happy with the pilot so far','IT raised concerns about the hosting region','the timeline is tight but feasible',
 'they need the contract in German','the CFO wants monthly instead of annual billing','they asked for a second demo for the wider team',
 'the works council has to be involved','they will send the signed order form tomorrow','there is no budget until January',
 'they want to start with 25 users and grow later','they prefer a phased rollout','the current vendor offered a big discount',
 'security review is complete','they asked about on-premise options','they need an answer before the board meeting',
 'they want weekly status calls','the integration partner is fully booked until March','they asked for better payment terms',
 'the pilot users gave very positive feedback','they are worried about data migration effort','the deal is on hold due to a reorganisation',
 'they have approved the budget','they want to add the service module later','the contract will auto-renew unless cancelled',
 'they requested a price freeze for three years','the new CTO wants to re-evaluate all tools','they need a DPA signed first',
 'they asked us to include training in the price','the project is now top priority for them','they will decide after the trade show',
 'they liked the reporting features a lot','they want a dedicated account manager','their IT team is understaffed',
 'they expect go-live before the summer break','they found a few bugs in the sandbox','they need SSO with Azure AD',
 'the purchase order is in the system','they asked for a cheaper starter package','we are on the shortlist',
 'they chose a competitor for now','they want to extend the trial by two weeks'] $$;

CREATE OR REPLACE FUNCTION pg_temp.timeframes() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'end of month','next Tuesday','the end of Q3','mid-November','the board meeting','the Christmas break',
 'end of this week','Monday morning','the next steering committee','the end of the fiscal year',
 'their summer holidays','the trade show','the budget meeting','early January','the go-live',
 'the quarterly review','the end of the trial','next Thursday','the 15th','the 1st of next month',
 'Easter','the kickoff','the renewal date','their audit','the holidays','tomorrow noon','the weekend',
 'the workshop','the release','the end of Q1'] $$;

CREATE OR REPLACE FUNCTION pg_temp.features() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'the Outlook plug-in','the CSV import','the mobile app','report export','the webhook integration',
 'two-factor login','the calendar sync','the e-mail templates','the dashboard','the REST API',
 'the search','the duplicate check','bulk editing','the PDF quote generator','the Gmail integration',
 'the customer portal','the approval workflow','the territory rules','the forecast view','the audit trail',
 'single sign-on','the data export','the Excel add-in','push notifications','the contact merge',
 'the pipeline board','custom reports','the telephony widget','the ticket inbox','attachments upload',
 'password reset','the address autocomplete','the German translation','the dark mode','the time tracking'] $$;

CREATE OR REPLACE FUNCTION pg_temp.problems() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'fails to sync','times out','shows duplicate records','returns a 500 error','is extremely slow',
 'crashes on start','loses the last changes','shows the wrong currency','ignores the time zone',
 'cuts off umlauts (ä, ö, ü)','does not load at all','logs users out every few minutes',
 'shows an empty page','sends e-mails twice','rounds amounts incorrectly','breaks the layout',
 'rejects valid e-mail addresses','hangs at 99%','displays garbled characters','stops after 1,000 rows',
 'does not respect permissions','shows outdated data','fails with "permission denied"',
 'freezes when attaching files','swaps first and last name'] $$;

CREATE OR REPLACE FUNCTION pg_temp.competitors() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'Salesforce','HubSpot','Pipedrive','Zoho','Dynamics 365','SugarCRM','a home-grown Access database',
 'spreadsheets','an old SAP CRM','Freshsales','monday.com','Close','Insightly','Copper','a local vendor'] $$;

CREATE OR REPLACE FUNCTION pg_temp.moods() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'very happy','frustrated','cautiously optimistic','under a lot of pressure','blocked','enthusiastic',
 'sceptical','impatient','relieved','confused','positive','worried','excited','neutral','unhappy'] $$;

CREATE OR REPLACE FUNCTION pg_temp.meetings() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'workshop','demo','call','video call','on-site visit','lunch meeting','steering committee','QBR',
 'kickoff','training session','technical deep dive','pricing call','contract review','check-in'] $$;

CREATE OR REPLACE FUNCTION pg_temp.teams() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'their sales team','the service desk','the finance team','IT','the marketing team','management',
 'the warehouse staff','the field engineers','customer success','the back office','their partners',
 'the pilot group'] $$;

CREATE OR REPLACE FUNCTION pg_temp.currencies() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'EUR','EUR','EUR','EUR','USD','USD','GBP','CHF','SEK','DKK','PLN'] $$;

CREATE OR REPLACE FUNCTION pg_temp.weekdays() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'Monday','Tuesday','Wednesday','Thursday','Friday'] $$;

CREATE OR REPLACE FUNCTION pg_temp.months() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'January','February','March','April','May','June','July','August','September','October','November','December'] $$;

CREATE OR REPLACE FUNCTION pg_temp.concerns() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'the total cost','data protection','the migration effort','user adoption','vendor lock-in','performance',
 'the contract length','support response times','the learning curve','integration with their ERP',
 'hidden costs','uptime','where the data is hosted','the exit strategy','customisation limits'] $$;

CREATE OR REPLACE FUNCTION pg_temp.errors() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'Connection reset by peer','Invalid token — please sign in again','Unexpected character at line 1 column 1',
 'The operation has timed out','Access denied for user','Could not parse date "31.02.2024"',
 'Quota exceeded (429 Too Many Requests)','Object reference not set to an instance of an object',
 'SSL handshake failed','Field "email" must be unique','Internal Server Error','File too large (max 25 MB)',
 'Unable to resolve host api.crm.example','Import aborted: 17 rows with errors','Duplicate key value violates unique constraint'] $$;

CREATE OR REPLACE FUNCTION pg_temp.feedback() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'the new pipeline view is much clearer','search needs to be faster','they love the mobile app',
 'the training was too short','the reports are exactly what management wanted',
 'field sales wants offline mode','the e-mail templates save a lot of time',
 'they want fewer clicks to log a call','the import wizard is confusing','the dashboards look great — très bien',
 'the German labels are sometimes wrong','they would like a dark mode','approval workflows are a game changer',
 'the calendar sync is unreliable','support answered within minutes'] $$;

CREATE OR REPLACE FUNCTION pg_temp.ui_actions() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'click "Save"','switch to the list view','filter by owner','sort by amount','open a contact',
 'press F5','upload a PDF','change the language to Deutsch','select all rows','export to Excel',
 'log out and in again','add a new custom field','drag the card to "Proposal"','clear the cache'] $$;

CREATE OR REPLACE FUNCTION pg_temp.signoffs() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'Best regards','Kind regards','Many thanks','Cheers','Viele Grüße','Mit freundlichen Grüßen',
 'Bien cordialement','Un saludo','Cordiali saluti','Met vriendelijke groet','Thanks again','All the best'] $$;

CREATE OR REPLACE FUNCTION pg_temp.deal_stages() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'lead','qualified','proposal','negotiation','closed_won','closed_lost'] $$;

-- activity kind of an activity id: 3/11 calls, 4/11 e-mails, 1/11 meetings, 2/11 notes, 1/11 tasks
CREATE OR REPLACE FUNCTION pg_temp.activity_kind(id bigint) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT
 (ARRAY['call','call','call','email','email','email','email','meeting','note','note','task'])[1 + pg_temp.r(id, 617, 11)] $$;

CREATE OR REPLACE FUNCTION pg_temp.channels() RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT ARRAY[
 'email','email','email','web','web','phone','chat','portal','api'] $$;

-- -----------------------------------------------------------------------------
-- Derived entities: pure functions of an id (a user's e-mail, a company's name
-- and domain), so the tables and the audit log agree on them
-- -----------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pg_temp.first_name(id bigint) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT pg_temp.p(pg_temp.first_names(), id, 101) $$;
CREATE OR REPLACE FUNCTION pg_temp.last_name(id bigint) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT pg_temp.p(pg_temp.last_names(), id, 102) $$;

CREATE OR REPLACE FUNCTION pg_temp.user_email(uid bigint) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT pg_temp.ascii(pg_temp.p(pg_temp.first_names(), uid, 201)) || '.'
          || pg_temp.ascii(pg_temp.p(pg_temp.last_names(), uid, 202)) || uid || '@brightwave.io' $$;
CREATE OR REPLACE FUNCTION pg_temp.user_name(uid bigint) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT pg_temp.p(pg_temp.first_names(), uid, 201) || ' ' || pg_temp.p(pg_temp.last_names(), uid, 202) $$;

CREATE OR REPLACE FUNCTION pg_temp.company_name(cid bigint) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN pg_temp.r(cid, 301, 5) = 0
                  THEN pg_temp.p(pg_temp.last_names(), cid, 302) || ' & ' || pg_temp.p(pg_temp.last_names(), cid, 303)
                  ELSE pg_temp.p(pg_temp.company_prefixes(), cid, 304) || ' ' || pg_temp.p(pg_temp.company_cores(), cid, 305)
             END || ' ' || pg_temp.p(pg_temp.legal_forms(), cid, 306) $$;
CREATE OR REPLACE FUNCTION pg_temp.company_domain(cid bigint) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN pg_temp.r(cid, 301, 5) = 0
                  THEN pg_temp.ascii(pg_temp.p(pg_temp.last_names(), cid, 302)) || '-' || pg_temp.ascii(pg_temp.p(pg_temp.last_names(), cid, 303))
                  ELSE pg_temp.ascii(pg_temp.p(pg_temp.company_prefixes(), cid, 304)) || '-' || pg_temp.ascii(pg_temp.p(pg_temp.company_cores(), cid, 305))
             END || '.' || pg_temp.p(pg_temp.tlds(), cid, 307) $$;

-- contact id -> company id (contacts are spread over the companies existing at the time)
CREATE OR REPLACE FUNCTION pg_temp.contact_company(ctid bigint, n_contacts bigint, n_companies bigint) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT 1 + pg_temp.r(ctid, 401, greatest(1, (n_companies * ctid) / n_contacts)) $$;

CREATE OR REPLACE FUNCTION pg_temp.contact_email(ctid bigint, cid bigint) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT CASE pg_temp.r(ctid, 402, 4)
               WHEN 0 THEN left(pg_temp.ascii(pg_temp.first_name(ctid)), 1) || pg_temp.ascii(pg_temp.last_name(ctid))
               WHEN 1 THEN pg_temp.ascii(pg_temp.first_name(ctid)) || '_' || pg_temp.ascii(pg_temp.last_name(ctid))
               ELSE pg_temp.ascii(pg_temp.first_name(ctid)) || '.' || pg_temp.ascii(pg_temp.last_name(ctid))
             END || '@' || pg_temp.company_domain(cid) $$;

CREATE OR REPLACE FUNCTION pg_temp.phone(x bigint, salt bigint, prefix text) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT prefix || ' ' || lpad(pg_temp.r(x, salt, 10000000)::text, 7, '0') $$;

CREATE OR REPLACE FUNCTION pg_temp.amount(x bigint, salt bigint) RETURNS numeric LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT round((500 + pg_temp.r(x, salt, 4999500))::numeric / 100
                   * (1 + 9 * (pg_temp.r(x, salt + 1, 5) = 0)::int)
                   * (1 + 4 * (pg_temp.r(x, salt + 2, 3) = 0)::int), 2) $$;

CREATE OR REPLACE FUNCTION pg_temp.money(x numeric) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT to_char(x, 'FM999,999,990.00') $$;

-- -----------------------------------------------------------------------------
-- Text: one sentence of CRM prose from a 64-bit seed
-- -----------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pg_temp.sentence(s bigint) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT CASE pg_temp.r(s, 0, 30)
 WHEN 0 THEN pg_temp.first_name(s) || ' from ' || pg_temp.p(pg_temp.teams(), s, 1) || ' asked whether we can '
             || pg_temp.p(pg_temp.verbs(), s, 2) || ' the ' || pg_temp.p(pg_temp.adjs(), s, 3) || ' '
             || pg_temp.p(pg_temp.docs(), s, 4) || ' before ' || pg_temp.p(pg_temp.timeframes(), s, 5) || '.'
 WHEN 1 THEN 'Discussed ' || pg_temp.p(pg_temp.topics(), s, 1) || ' with ' || pg_temp.p(pg_temp.roles(), s, 2)
             || '; ' || pg_temp.p(pg_temp.outcomes(), s, 3) || '.'
 WHEN 2 THEN 'They currently use ' || pg_temp.p(pg_temp.competitors(), s, 1) || ' and the contract ends in '
             || pg_temp.p(pg_temp.months(), s, 2) || ' ' || (2021 + pg_temp.r(s, 3, 6)) || '.'
 WHEN 3 THEN 'Action item: ' || pg_temp.p(pg_temp.verbs(), s, 1) || ' the ' || pg_temp.p(pg_temp.adjs(), s, 2)
             || ' ' || pg_temp.p(pg_temp.docs(), s, 3) || ' and send it to ' || pg_temp.first_name(s + 7)
             || ' by ' || pg_temp.p(pg_temp.weekdays(), s, 4) || '.'
 WHEN 4 THEN 'Budget for ' || pg_temp.p(pg_temp.topics(), s, 1) || ' is roughly '
             || to_char(1000 * (5 + pg_temp.r(s, 2, 495)), 'FM999,999,999') || ' '
             || pg_temp.p(pg_temp.currencies(), s, 3) || ', ' || pg_temp.p(pg_temp.outcomes(), s, 4) || '.'
 WHEN 5 THEN pg_temp.first_name(s) || ' mentioned that ' || pg_temp.p(pg_temp.teams(), s, 1) || ' is '
             || pg_temp.p(pg_temp.moods(), s, 2) || ' about the ' || pg_temp.p(pg_temp.products(), s, 3) || ' rollout.'
 WHEN 6 THEN 'Next step — schedule a ' || pg_temp.p(pg_temp.meetings(), s, 1) || ' with '
             || pg_temp.p(pg_temp.roles(), s, 2) || ' to go through ' || pg_temp.p(pg_temp.topics(), s, 3) || '.'
 WHEN 7 THEN 'The ' || pg_temp.p(pg_temp.adjs(), s, 1) || ' ' || pg_temp.p(pg_temp.docs(), s, 2)
             || ' is on the share: \\fs0' || (1 + pg_temp.r(s, 3, 4)) || '\sales\' || pg_temp.ascii(pg_temp.last_name(s))
             || '\' || replace(pg_temp.p(pg_temp.docs(), s, 2), ' ', '_') || '_v' || (1 + pg_temp.r(s, 4, 9)) || '.docx'
 WHEN 8 THEN E'Pricing:\t' || pg_temp.p(pg_temp.products(), s, 1) || E'\t' || (5 + pg_temp.r(s, 2, 495))
             || E' seats\t' || pg_temp.money(pg_temp.amount(s, 3)) || ' ' || pg_temp.p(pg_temp.currencies(), s, 6) || '/year'
 WHEN 9 THEN 'Customer reports that ' || pg_temp.p(pg_temp.features(), s, 1) || ' ' || pg_temp.p(pg_temp.problems(), s, 2)
             || ' since the ' || (3 + pg_temp.r(s, 3, 3)) || '.' || pg_temp.r(s, 4, 20) || '.' || pg_temp.r(s, 5, 10)
             || ' update.'
 WHEN 10 THEN 'Great call 😀 — ' || pg_temp.first_name(s) || ' confirmed that ' || pg_temp.p(pg_temp.topics(), s, 1)
             || ' is on track for ' || pg_temp.p(pg_temp.months(), s, 2) || '.'
 WHEN 11 THEN 'Ticket #' || (100000 + pg_temp.r(s, 1, 900000)) || ' was escalated to second level and '
             || pg_temp.p(pg_temp.roles(), s, 2) || ' has been informed.'
 WHEN 12 THEN 'Sent the ' || pg_temp.p(pg_temp.adjs(), s, 1) || ' ' || pg_temp.p(pg_temp.docs(), s, 2) || ' to '
             || pg_temp.first_name(s) || ' ' || pg_temp.last_name(s) || ' and put '
             || pg_temp.first_name(s + 3) || ' in cc.'
 WHEN 13 THEN 'Their main concern is ' || pg_temp.p(pg_temp.concerns(), s, 1) || ', especially around '
             || pg_temp.p(pg_temp.topics(), s, 2) || '.'
 WHEN 14 THEN 'We agreed on a ' || (5 + pg_temp.r(s, 1, 26)) || '% discount if they sign before '
             || pg_temp.p(pg_temp.timeframes(), s, 2) || '.'
 WHEN 15 THEN 'Steps to reproduce: open ' || pg_temp.p(pg_temp.features(), s, 1) || ', '
             || pg_temp.p(pg_temp.ui_actions(), s, 2) || ', then ' || pg_temp.p(pg_temp.ui_actions(), s, 3)
             || E' \u2014 it ' || pg_temp.p(pg_temp.problems(), s, 4) || '.'
 WHEN 16 THEN 'Error message: "' || pg_temp.p(pg_temp.errors(), s, 1) || '" (code '
             || (1000 + pg_temp.r(s, 2, 9000)) || ', request id ' || to_hex(pg_temp.r(s, 3, 4294967296)) || ').'
 WHEN 17 THEN 'Log file: C:\Program Files\CRM Connector\logs\sync-2024' || lpad((1 + pg_temp.r(s, 1, 12))::text, 2, '0')
             || lpad((1 + pg_temp.r(s, 2, 28))::text, 2, '0') || '.log, line ' || pg_temp.r(s, 3, 50000) || '.'
 WHEN 18 THEN pg_temp.first_name(s) || ' is out of office until ' || pg_temp.p(pg_temp.weekdays(), s, 1) || '; '
             || pg_temp.first_name(s + 5) || ' ' || pg_temp.last_name(s + 5) || ' is covering in the meantime.'
 WHEN 19 THEN 'They have ' || (3 + pg_temp.r(s, 1, 300)) || ' users today and plan to grow to '
             || (300 + pg_temp.r(s, 2, 2000)) || ' by ' || pg_temp.p(pg_temp.timeframes(), s, 3) || '.'
 WHEN 20 THEN 'Feedback from the workshop in ' || split_part(pg_temp.p(pg_temp.cities(), s, 1), '|', 1) || ': '
             || pg_temp.p(pg_temp.feedback(), s, 2) || '.'
 WHEN 21 THEN 'Reminder: ' || pg_temp.p(pg_temp.verbs(), s, 1) || ' ' || pg_temp.p(pg_temp.topics(), s, 2)
             || ' before the ' || pg_temp.p(pg_temp.meetings(), s, 3) || ' on ' || pg_temp.p(pg_temp.weekdays(), s, 4) || '.'
 WHEN 22 THEN 'Invoice INV-' || (2021 + pg_temp.r(s, 1, 4)) || '-' || lpad(pg_temp.r(s, 2, 1000000)::text, 6, '0')
             || ' over ' || pg_temp.money(pg_temp.amount(s, 3)) || ' ' || pg_temp.p(pg_temp.currencies(), s, 6)
             || ' is ' || (ARRAY['paid','overdue','disputed','partially paid','due next week','cancelled'])[1 + pg_temp.r(s, 7, 6)] || '.'
 WHEN 23 THEN 'Quote from ' || pg_temp.first_name(s) || ': "' || initcap(left(pg_temp.p(pg_temp.feedback(), s, 1), 1))
             || substr(pg_temp.p(pg_temp.feedback(), s, 1), 2) || ', but ' || pg_temp.p(pg_temp.outcomes(), s, 2) || '."'
 WHEN 24 THEN 'Called ' || pg_temp.phone(s, 1, split_part(pg_temp.p(pg_temp.cities(), s, 2), '|', 5))
             || ' at ' || lpad((8 + pg_temp.r(s, 3, 10))::text, 2, '0') || ':' || lpad(pg_temp.r(s, 4, 60)::text, 2, '0')
             || ', ' || (ARRAY['no answer','left a voicemail','spoke briefly','line was busy','got the assistant'])[1 + pg_temp.r(s, 5, 5)] || '.'
 WHEN 25 THEN 'Compared to ' || pg_temp.p(pg_temp.competitors(), s, 1) || ', our ' || pg_temp.p(pg_temp.products(), s, 2)
             || ' is ' || (5 + pg_temp.r(s, 3, 40)) || '% ' || (ARRAY['cheaper','more expensive'])[1 + pg_temp.r(s, 4, 2)]
             || ' over ' || (1 + pg_temp.r(s, 5, 5)) || ' years.'
 WHEN 26 THEN 'Please ' || pg_temp.p(pg_temp.verbs(), s, 1) || ' ' || pg_temp.p(pg_temp.topics(), s, 2) || ' with '
             || pg_temp.first_name(s) || ' — ' || pg_temp.p(pg_temp.concerns(), s, 3) || ' is still open.'
 WHEN 27 THEN 'Workaround: ' || pg_temp.p(pg_temp.ui_actions(), s, 1) || ' and ' || pg_temp.p(pg_temp.ui_actions(), s, 2)
             || '; the fix is planned for release ' || (4 + pg_temp.r(s, 3, 2)) || '.' || pg_temp.r(s, 4, 20) || '.'
 WHEN 28 THEN 'Met ' || pg_temp.first_name(s) || ' ' || pg_temp.last_name(s) || ' (' || pg_temp.p(pg_temp.job_titles(), s, 1)
             || ') at the ' || pg_temp.p(pg_temp.meetings(), s, 2) || ' in ' || split_part(pg_temp.p(pg_temp.cities(), s, 3), '|', 1) || '.'
 ELSE 'Renewal on ' || to_char(date '2021-01-01' + pg_temp.r(s, 1, 1826)::int, 'DD.MM.YYYY') || ' for '
             || (5 + pg_temp.r(s, 2, 495)) || ' seats of ' || pg_temp.p(pg_temp.products(), s, 3)
             || ', ' || pg_temp.p(pg_temp.outcomes(), s, 4) || '.'
 END $$;

-- prose(seed, n): n sentences, broken into paragraphs. (PL/pgSQL: its
-- expressions are planned once per session, a SQL function with a FROM clause
-- would be re-planned on every call when nested in another function.)
CREATE OR REPLACE FUNCTION pg_temp.prose(seed bigint, n int) RETURNS text LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    parts text[] := '{}';
BEGIN
    FOR k IN 1..n LOOP
        IF k > 1 THEN
            parts := parts || CASE WHEN pg_temp.r(seed, k, 3) = 0 THEN E'\n\n' ELSE ' ' END;
        END IF;
        parts := parts || pg_temp.sentence(hashint8extended(seed, k));
    END LOOP;
    RETURN array_to_string(parts, '');
END $$;

-- -----------------------------------------------------------------------------
-- Row builders shared by the generator and crm_day.sql
-- -----------------------------------------------------------------------------
-- Activity subject and body. id: activity id, ct: contact id, uid: author.
CREATE OR REPLACE FUNCTION pg_temp.activity_subject(id bigint, kind crm.activity_kind, cid bigint) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT CASE kind
   WHEN 'call'    THEN 'Call: ' || pg_temp.p(pg_temp.topics(), id, 501)
   WHEN 'email'   THEN (ARRAY['','Re: ','RE: ','Fwd: ','AW: '])[1 + pg_temp.r(id, 502, 5)]
                       || initcap(left(pg_temp.p(pg_temp.topics(), id, 501), 1)) || substr(pg_temp.p(pg_temp.topics(), id, 501), 2)
                       || ' — ' || pg_temp.company_name(cid)
   WHEN 'meeting' THEN initcap(pg_temp.p(pg_temp.meetings(), id, 503)) || ' with ' || pg_temp.company_name(cid)
   WHEN 'note'    THEN 'Note on ' || pg_temp.p(pg_temp.topics(), id, 501)
   ELSE 'Follow up: ' || pg_temp.p(pg_temp.verbs(), id, 504) || ' the ' || pg_temp.p(pg_temp.docs(), id, 505)
 END $$;

CREATE OR REPLACE FUNCTION pg_temp.activity_body(id bigint, kind crm.activity_kind, ct bigint, uid bigint, cid bigint) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT CASE kind
   WHEN 'email' THEN
        (ARRAY['Hi ','Hello ','Dear ','Hallo ','Bonjour '])[1 + pg_temp.r(id, 511, 5)] || pg_temp.first_name(ct) || E',\n\n'
        || pg_temp.prose(id, 4 + pg_temp.r(id, 512, 9)::int) || E'\n\n'
        || pg_temp.p(pg_temp.signoffs(), id, 513) || E',\n' || pg_temp.user_name(uid) || E'\n'
        || 'Brightwave Solutions GmbH | Account Management' || E'\n' || pg_temp.phone(uid, 514, '+49 30')
        || CASE WHEN pg_temp.r(id, 515, 2) = 0 THEN '' ELSE
             E'\n\n-----Original Message-----\nFrom: ' || pg_temp.first_name(ct) || ' ' || pg_temp.last_name(ct)
             || ' <' || pg_temp.contact_email(ct, cid) || E'>\nSent: '
             || to_char(date '2021-01-01' + pg_temp.r(id, 516, 1461)::int, 'FMDay, DD FMMonth YYYY')
             || E'\nSubject: ' || pg_temp.p(pg_temp.topics(), id, 501) || E'\n\n> '
             || replace(pg_temp.prose(id + 1000000007, 2 + pg_temp.r(id, 517, 5)::int), E'\n', E'\n> ') END
   WHEN 'call' THEN
        'Call with ' || pg_temp.first_name(ct) || ' ' || pg_temp.last_name(ct) || ' ('
        || (5 + pg_temp.r(id, 521, 55)) || E' min).\n\n' || pg_temp.prose(id, 2 + pg_temp.r(id, 522, 8)::int)
   WHEN 'meeting' THEN
        'Attendees: ' || pg_temp.first_name(ct) || ' ' || pg_temp.last_name(ct) || ', ' || pg_temp.user_name(uid)
        || ', ' || pg_temp.first_name(id + 11) || ' ' || pg_temp.last_name(id + 11) || E'\n\nAgenda:\n\t1. '
        || pg_temp.p(pg_temp.topics(), id, 531) || E'\n\t2. ' || pg_temp.p(pg_temp.topics(), id, 532)
        || E'\n\t3. AOB\n\nNotes:\n' || pg_temp.prose(id, 5 + pg_temp.r(id, 533, 10)::int)
   WHEN 'note' THEN pg_temp.prose(id, 1 + pg_temp.r(id, 541, 6)::int)
   ELSE pg_temp.sentence(hashint8extended(id, 551))
 END $$;

CREATE OR REPLACE FUNCTION pg_temp.ticket_subject(id bigint) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT CASE pg_temp.r(id, 601, 4)
   WHEN 0 THEN initcap(left(pg_temp.p(pg_temp.features(), id, 602), 1)) || substr(pg_temp.p(pg_temp.features(), id, 602), 2)
               || ' ' || pg_temp.p(pg_temp.problems(), id, 603)
   WHEN 1 THEN 'Question about ' || pg_temp.p(pg_temp.topics(), id, 604)
   WHEN 2 THEN 'Error: ' || pg_temp.p(pg_temp.errors(), id, 605)
   ELSE 'Invoice INV-' || (2021 + pg_temp.r(id, 606, 4)) || '-' || lpad(pg_temp.r(id, 607, 1000000)::text, 6, '0') || ' — please check'
 END $$;

CREATE OR REPLACE FUNCTION pg_temp.ticket_body(id bigint, ct bigint, cid bigint) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT (ARRAY['Hello support team,','Hi,','Hallo zusammen,','Dear Brightwave support,','Bonjour,'])[1 + pg_temp.r(id, 611, 5)]
        || E'\n\n' || pg_temp.prose(id + 2000000011, 3 + pg_temp.r(id, 612, 8)::int)
        || CASE WHEN pg_temp.r(id, 613, 3) = 0 THEN '' ELSE
             E'\n\nEnvironment:\n\tBrowser: ' || (ARRAY['Chrome','Firefox','Edge','Safari'])[1 + pg_temp.r(id, 614, 4)]
             || ' ' || (90 + pg_temp.r(id, 615, 40)) || E'\n\tOS: ' || (ARRAY['Windows 10','Windows 11','macOS 14','Ubuntu 22.04','iOS 17','Android 14'])[1 + pg_temp.r(id, 616, 6)]
             || E'\n\tTenant: ' || pg_temp.company_domain(cid) END
        || E'\n\n' || pg_temp.p(pg_temp.signoffs(), id, 617) || E',\n' || pg_temp.first_name(ct) || ' ' || pg_temp.last_name(ct)
        || E'\n' || pg_temp.company_name(cid) $$;

-- Attachment content of about len bytes for a given mime type: random-looking
-- bytes behind a file signature for PDFs, images and documents, CRM text for
-- CSV and plain-text files.
CREATE OR REPLACE FUNCTION pg_temp.attachment_content(id bigint, mime text, len int) RETURNS bytea
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET plan_cache_mode = force_generic_plan  -- plan the queries below once, not on every call
AS $$
DECLARE
    magic bytea;
    body bytea;
BEGIN
    magic := CASE mime WHEN 'application/pdf' THEN '\x255044462d312e370a'::bytea
                       WHEN 'image/png' THEN '\x89504e470d0a1a0a'::bytea
                       WHEN 'image/jpeg' THEN '\xffd8ffe0'::bytea
                       WHEN 'application/vnd.openxmlformats-officedocument.wordprocessingml.document' THEN '\x504b0304'::bytea
             END;
    IF magic IS NOT NULL THEN
        SELECT magic || substring(string_agg(sha256(int8send(id * 1024 + k)), ''::bytea ORDER BY k) FROM 1 FOR len - octet_length(magic))
          INTO body FROM generate_series(0, len / 32) k;
    ELSIF mime = 'text/csv' THEN
        SELECT convert_to(left('id;company;contact;email;amount;currency;stage' || E'\r\n'
                               || string_agg(k || ';' || pg_temp.company_name(id * 64 + k) || ';'
                                             || pg_temp.first_name(id * 64 + k) || ' ' || pg_temp.last_name(id * 64 + k) || ';'
                                             || pg_temp.contact_email(id * 64 + k, id * 64 + k) || ';'
                                             || pg_temp.amount(id * 64 + k, 701) || ';' || pg_temp.p(pg_temp.currencies(), id * 64 + k, 702) || ';'
                                             || (pg_temp.deal_stages())[1 + pg_temp.r(id * 64 + k, 703, 6)],
                                             E'\r\n' ORDER BY k), len), 'UTF8')
          INTO body FROM generate_series(1, 1 + len / 90) k;
    ELSE
        body := convert_to(left(pg_temp.prose(id + 3000000019, 2 + len / 80), len), 'UTF8');
    END IF;
    RETURN body;
END $$;

-- Audit log payloads. snapshot: the row as inserted (or as deleted);
-- change: the columns touched by an update, old (is_new = false) or new values.
CREATE OR REPLACE FUNCTION pg_temp.audit_snapshot(tbl text, rid bigint, g bigint, nct bigint, nco bigint) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT CASE tbl
   WHEN 'contacts' THEN jsonb_build_object(
        'id', rid, 'company_id', pg_temp.contact_company(rid, nct, nco),
        'first_name', pg_temp.first_name(rid), 'last_name', pg_temp.last_name(rid),
        'email', pg_temp.contact_email(rid, pg_temp.contact_company(rid, nct, nco)),
        'phone', pg_temp.phone(rid, 411, split_part(pg_temp.p(pg_temp.cities(), rid, 431), '|', 5)),
        'job_title', pg_temp.p(pg_temp.job_titles(), rid, 414), 'lifecycle_stage', 'lead',
        'city', split_part(pg_temp.p(pg_temp.cities(), rid, 431), '|', 1))
   WHEN 'deals' THEN jsonb_build_object(
        'id', rid, 'name', pg_temp.p(pg_temp.products(), rid, 511) || ' — ' || pg_temp.company_name(rid),
        'amount', pg_temp.amount(rid, 513), 'currency', pg_temp.p(pg_temp.currencies(), rid, 516),
        'stage', 'lead', 'probability', 10)
   WHEN 'activities' THEN jsonb_build_object(
        'id', rid, 'kind', pg_temp.activity_kind(rid),
        'subject', 'Note on ' || pg_temp.p(pg_temp.topics(), rid, 501),
        'body', pg_temp.prose(rid, 2 + pg_temp.r(g, 930, 4)::int))
   WHEN 'tickets' THEN jsonb_build_object(
        'id', rid, 'subject', pg_temp.ticket_subject(rid), 'status', 'new',
        'priority', (ARRAY['low','normal','normal','normal','high','high','urgent'])[1 + pg_temp.r(rid, 712, 7)],
        'channel', pg_temp.p(pg_temp.channels(), rid, 713))
   ELSE jsonb_build_object(
        'id', rid, 'name', pg_temp.company_name(rid), 'domain', pg_temp.company_domain(rid),
        'industry', pg_temp.p(pg_temp.industries(), rid, 310),
        'country', split_part(pg_temp.p(pg_temp.cities(), rid, 311), '|', 3))
 END $$;

CREATE OR REPLACE FUNCTION pg_temp.audit_change(tbl text, rid bigint, g bigint, sec bigint, is_new boolean) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT jsonb_build_object('updated_at', pg_temp.ts(CASE WHEN is_new THEN sec ELSE sec - 1 - pg_temp.r(g, 940, 5000000) END))
   || CASE tbl
   WHEN 'contacts' THEN CASE pg_temp.r(g, 941, 4)
        WHEN 0 THEN jsonb_build_object('phone', pg_temp.phone(g, 942 + is_new::int, split_part(pg_temp.p(pg_temp.cities(), rid, 431), '|', 5)),
                                       'mobile', pg_temp.phone(g, 944 + is_new::int, split_part(pg_temp.p(pg_temp.cities(), rid, 431), '|', 5)))
        WHEN 1 THEN jsonb_build_object('job_title', pg_temp.p(pg_temp.job_titles(), g + is_new::int, 946))
        WHEN 2 THEN jsonb_build_object('lifecycle_stage', (ARRAY['lead','marketing_qualified','sales_qualified','opportunity','customer','evangelist','churned'])[1 + pg_temp.r(g, 948, 6) + is_new::int],
                                       'custom_fields', jsonb_build_object('lead_score', pg_temp.r(g, 949 + is_new::int, 101)))
        ELSE jsonb_build_object('tags', to_jsonb(ARRAY[pg_temp.p(pg_temp.tags(), g, 951), pg_temp.p(pg_temp.tags(), g, 952 + is_new::int)]))
        END
   WHEN 'deals' THEN CASE pg_temp.r(g, 941, 3)
        WHEN 0 THEN jsonb_build_object('stage', (pg_temp.deal_stages())[1 + pg_temp.r(g, 953, 4) + is_new::int],
                                       'probability', (ARRAY[10, 25, 50, 75, 100])[1 + pg_temp.r(g, 953, 4) + is_new::int])
        WHEN 1 THEN jsonb_build_object('amount', pg_temp.amount(g, 954 + 3 * is_new::int))
        ELSE jsonb_build_object('expected_close_date', date '2021-02-01' + (sec / 86400)::int + pg_temp.r(g, 958 + is_new::int, 120)::int,
                                'owner_id', 1 + pg_temp.r(g, 960 + is_new::int, 500))
        END
   WHEN 'activities' THEN CASE pg_temp.r(g, 941, 3)
        WHEN 0 THEN jsonb_build_object('outcome', (ARRAY['completed','no answer','left voicemail','rescheduled','positive','negative','follow-up needed'])[1 + pg_temp.r(g, 962, 6) + is_new::int])
        ELSE jsonb_build_object('body', pg_temp.prose(g * 2 + is_new::int, 2 + pg_temp.r(g, 964, 4)::int))
        END
   WHEN 'tickets' THEN CASE pg_temp.r(g, 941, 3)
        WHEN 0 THEN jsonb_build_object('status', (ARRAY['new','open','pending','on_hold','solved','closed'])[1 + pg_temp.r(g, 965, 5) + is_new::int])
        WHEN 1 THEN jsonb_build_object('priority', (ARRAY['low','normal','high','urgent'])[1 + pg_temp.r(g, 966 + is_new::int, 4)],
                                       'assignee_id', 1 + pg_temp.r(g, 968 + is_new::int, 500))
        ELSE jsonb_build_object('comments', 3 + pg_temp.r(g, 970, 10) + is_new::int)
             || CASE WHEN is_new THEN jsonb_build_object('last_comment', pg_temp.prose(g, 1 + pg_temp.r(g, 971, 4)::int)) ELSE '{}' END
        END
   ELSE CASE pg_temp.r(g, 941, 2)
        WHEN 0 THEN jsonb_build_object('employee_count', 5 + pg_temp.r(g, 972 + is_new::int, 5000))
        ELSE jsonb_build_object('phone', pg_temp.phone(g, 974 + is_new::int, split_part(pg_temp.p(pg_temp.cities(), rid, 311), '|', 5)),
                                'street', pg_temp.p(pg_temp.streets(), g, 976 + is_new::int) || ' ' || (1 + pg_temp.r(g, 978 + is_new::int, 180)))
        END
 END $$;

-- -----------------------------------------------------------------------------
-- Table generators: rows lo..hi of each table (ids given explicitly), created
-- in [t0, t0 + span). References point to rows that existed at the time:
-- row g of hi refers to ids up to about n_ref * g / hi. These functions are
-- inlined by the planner, so INSERT ... SELECT * FROM gen_x(...) streams the
-- rows in id order. crm_day.sql uses them for the new rows of a day.
-- -----------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pg_temp.gen_users(lo bigint, hi bigint, t0 bigint, span bigint)
RETURNS SETOF crm.users LANGUAGE sql STABLE
AS $$
SELECT g, pg_temp.user_email(g), pg_temp.user_name(g),
       (ARRAY['sales','sales','sales','support','support','marketing','admin'])[1 + pg_temp.r(g, 210, 7)],
       (ARRAY['DACH','France','Benelux','UK & Ireland','Nordics','Iberia','Italy','North America','Inside Sales','Customer Success'])[1 + pg_temp.r(g, 211, 10)],
       (ARRAY['Europe/Berlin','Europe/Paris','Europe/London','Europe/Madrid','America/New_York','Europe/Stockholm'])[1 + pg_temp.r(g, 212, 6)],
       pg_temp.r(g, 213, 10) <> 0,
       pg_temp.ts(sec), pg_temp.ts_upd(sec, pg_temp.r(g, 215, 30000000), t0 + span - 1)
FROM generate_series(lo, hi) g
CROSS JOIN LATERAL (SELECT pg_temp.tsat(g, lo, hi, t0, span, 214) AS sec OFFSET 0) t
$$;

CREATE OR REPLACE FUNCTION pg_temp.gen_companies(lo bigint, hi bigint, n_users bigint, t0 bigint, span bigint)
RETURNS SETOF crm.companies LANGUAGE sql STABLE
AS $$
SELECT g, pg_temp.company_name(g), pg_temp.company_domain(g), pg_temp.p(pg_temp.industries(), g, 310),
       emp, round(emp * (40000 + pg_temp.r(g, 312, 160000))::numeric, -3),
       pg_temp.phone(g, 313, split_part(city, '|', 5)),
       pg_temp.p(pg_temp.streets(), g, 314) || ' ' || (1 + pg_temp.r(g, 315, 180)),
       split_part(city, '|', 1), split_part(city, '|', 2),
       split_part(city, '|', 4) || lpad(pg_temp.r(g, 316, 1000)::text, 3, '0'), split_part(city, '|', 3),
       1 + pg_temp.r(g, 317, n_users),
       jsonb_build_object('segment', (ARRAY['smb','mid-market','enterprise'])[1 + pg_temp.r(g, 318, 3)],
                          'vat_id', split_part(city, '|', 3) || lpad(pg_temp.r(g, 319, 1000000000)::text, 9, '0'),
                          'customer_since', 2010 + pg_temp.r(g, 320, 15),
                          'payment_terms_days', (ARRAY[14, 30, 30, 45, 60])[1 + pg_temp.r(g, 321, 5)],
                          'erp_number', 'K-' || lpad(g::text, 7, '0')),
       pg_temp.ts(sec), pg_temp.ts_upd(sec, pg_temp.r(g, 323, 20000000), t0 + span - 1)
FROM generate_series(lo, hi) g
CROSS JOIN LATERAL (SELECT pg_temp.p(pg_temp.cities(), g, 311) AS city,
                           (ARRAY[3, 8, 12, 25, 40, 80, 150, 400, 1200, 5000])[1 + pg_temp.r(g, 324, 10)] * (1 + pg_temp.r(g, 325, 9))::int AS emp,
                           pg_temp.tsat(g, lo, hi, t0, span, 322) AS sec
                    OFFSET 0) c
$$;

CREATE OR REPLACE FUNCTION pg_temp.gen_contacts(lo bigint, hi bigint, n_users bigint, n_companies bigint, t0 bigint, span bigint)
RETURNS SETOF crm.contacts LANGUAGE sql STABLE
AS $$
SELECT g, cid, 1 + pg_temp.r(g, 410, n_users),
       pg_temp.first_name(g), pg_temp.last_name(g), pg_temp.contact_email(g, cid),
       pg_temp.phone(g, 411, split_part(city, '|', 5)),
       CASE WHEN pg_temp.r(g, 412, 3) = 0 THEN NULL ELSE pg_temp.phone(g, 413, split_part(city, '|', 5)) END,
       pg_temp.p(pg_temp.job_titles(), g, 414),
       pg_temp.p(pg_temp.streets(), g, 415) || ' ' || (1 + pg_temp.r(g, 416, 180)),
       split_part(city, '|', 1), split_part(city, '|', 2),
       split_part(city, '|', 4) || lpad(pg_temp.r(g, 417, 1000)::text, 3, '0'), split_part(city, '|', 3),
       (ARRAY['lead','lead','marketing_qualified','sales_qualified','opportunity','customer','customer','customer','evangelist','churned'])[1 + pg_temp.r(g, 418, 10)],
       jsonb_build_object('lead_source', pg_temp.p(pg_temp.lead_sources(), g, 419),
                          'preferred_language', (ARRAY['de','en','fr','nl','es','it','sv','pl'])[1 + pg_temp.r(g, 420, 8)],
                          'newsletter_opt_in', pg_temp.r(g, 421, 2) = 0,
                          'lead_score', pg_temp.r(g, 422, 101),
                          'linkedin', 'https://www.linkedin.com/in/' || pg_temp.ascii(pg_temp.first_name(g)) || '-'
                                      || pg_temp.ascii(pg_temp.last_name(g)) || '-' || to_hex(pg_temp.r(g, 423, 16777216)),
                          'birthday', to_char(date '1955-01-01' + pg_temp.r(g, 424, 16000)::int, 'YYYY-MM-DD'),
                          'gdpr', jsonb_build_object('consent', pg_temp.r(g, 425, 4) <> 0,
                                                     'source', (ARRAY['web form','trade show','contract','phone'])[1 + pg_temp.r(g, 426, 4)])),
       (ARRAY[(pg_temp.tags())[1 + t], (pg_temp.tags())[1 + (t + 7) % 30], (pg_temp.tags())[1 + (t + 17) % 30]])[1:pg_temp.r(g, 428, 4)],
       pg_temp.ts(sec), pg_temp.ts_upd(sec, pg_temp.r(g, 430, 15000000), t0 + span - 1)
FROM generate_series(lo, hi) g
CROSS JOIN LATERAL (SELECT pg_temp.contact_company(g, hi, n_companies) AS cid,
                           pg_temp.p(pg_temp.cities(), g, 431) AS city,
                           pg_temp.r(g, 427, 30)::int AS t,
                           pg_temp.tsat(g, lo, hi, t0, span, 429) AS sec
                    OFFSET 0) c
$$;

CREATE OR REPLACE FUNCTION pg_temp.gen_deals(lo bigint, hi bigint, n_users bigint, n_contacts bigint, t0 bigint, span bigint)
RETURNS SETOF crm.deals LANGUAGE sql STABLE
AS $$
SELECT g, cid, ct, 1 + pg_temp.r(g, 510, n_users),
       pg_temp.p(pg_temp.products(), g, 511) || ' — ' || pg_temp.company_name(cid)
         || ' ' || (2021 + sec / 31557600) || ' ' || (ARRAY['new business','renewal','upsell','expansion'])[1 + pg_temp.r(g, 512, 4)],
       pg_temp.amount(g, 513), pg_temp.p(pg_temp.currencies(), g, 516), stage,
       CASE stage WHEN 'lead' THEN 10 WHEN 'qualified' THEN 25 WHEN 'proposal' THEN 50
                  WHEN 'negotiation' THEN 75 WHEN 'closed_won' THEN 100 ELSE 0 END,
       date '2021-01-01' + (sec / 86400)::int + 14 + pg_temp.r(g, 517, 180)::int,
       pg_temp.prose(g + 4000000007, 1 + pg_temp.r(g, 518, 3)::int),
       pg_temp.ts(sec), pg_temp.ts_upd(sec, pg_temp.r(g, 519, 10000000), t0 + span - 1),
       CASE WHEN stage IN ('closed_won', 'closed_lost') THEN pg_temp.ts_upd(sec, pg_temp.r(g, 519, 10000000), t0 + span - 1) END
FROM generate_series(lo, hi) g
CROSS JOIN LATERAL (SELECT 1 + pg_temp.r(g, 520, greatest(1, (n_contacts * g) / hi)) AS ct,
                           pg_temp.p(pg_temp.deal_stages(), g, 521)::crm.deal_stage AS stage,
                           pg_temp.tsat(g, lo, hi, t0, span, 522) AS sec
                    OFFSET 0) c
CROSS JOIN LATERAL (SELECT (SELECT company_id FROM crm.contacts WHERE id = ct) AS cid OFFSET 0) co
$$;

-- Half of the activities belong to a deal (and then to the deal's contact).
CREATE OR REPLACE FUNCTION pg_temp.gen_activities(lo bigint, hi bigint, n_users bigint, n_contacts bigint, n_deals bigint,
                                                  t0 bigint, span bigint)
RETURNS SETOF crm.activities LANGUAGE sql STABLE
AS $$
SELECT g, ct, deal, uid, kind,
       pg_temp.activity_subject(g, kind, cid),
       pg_temp.activity_body(g, kind, ct, uid, cid),
       pg_temp.ts(greatest(t0, sec - pg_temp.r(g, 610, 86400))),
       CASE WHEN kind IN ('call', 'meeting') THEN 5 + pg_temp.r(g, 611, 85)::int END,
       CASE WHEN kind IN ('call', 'meeting', 'task')
            THEN (ARRAY['completed','no answer','left voicemail','rescheduled','positive','negative','follow-up needed'])[1 + pg_temp.r(g, 612, 7)] END,
       pg_temp.ts(sec), pg_temp.ts_upd(sec, pg_temp.r(g, 613, 2000000), t0 + span - 1)
FROM generate_series(lo, hi) g
CROSS JOIN LATERAL (SELECT CASE WHEN pg_temp.r(g, 614, 2) = 0 THEN 1 + pg_temp.r(g, 615, greatest(1, (n_deals * g) / hi)) END AS deal,
                           1 + pg_temp.r(g, 616, n_users) AS uid,
                           pg_temp.activity_kind(g)::crm.activity_kind AS kind,
                           pg_temp.tsat(g, lo, hi, t0, span, 618) AS sec
                    OFFSET 0) a
CROSS JOIN LATERAL (SELECT coalesce((SELECT contact_id FROM crm.deals WHERE id = deal),
                                    1 + pg_temp.r(g, 619, greatest(1, (n_contacts * g) / hi))) AS ct
                    OFFSET 0) c
CROSS JOIN LATERAL (SELECT (SELECT company_id FROM crm.contacts WHERE id = ct) AS cid OFFSET 0) co
$$;

CREATE OR REPLACE FUNCTION pg_temp.gen_tickets(lo bigint, hi bigint, n_users bigint, n_contacts bigint, t0 bigint, span bigint)
RETURNS SETOF crm.tickets LANGUAGE sql STABLE
AS $$
SELECT g, cid, ct,
       CASE WHEN pg_temp.r(g, 710, 10) = 0 THEN NULL ELSE 1 + pg_temp.r(g, 711, n_users) END,
       pg_temp.ticket_subject(g), pg_temp.ticket_body(g, ct, cid),
       status, (ARRAY['low','normal','normal','normal','high','high','urgent'])[1 + pg_temp.r(g, 712, 7)],
       pg_temp.p(pg_temp.channels(), g, 713),
       pg_temp.ts(sec), pg_temp.ts_upd(sec, pg_temp.r(g, 714, 3000000), t0 + span - 1),
       CASE WHEN status IN ('solved', 'closed') THEN pg_temp.ts_upd(sec, pg_temp.r(g, 714, 3000000), t0 + span - 1) END
FROM generate_series(lo, hi) g
CROSS JOIN LATERAL (SELECT 1 + pg_temp.r(g, 715, greatest(1, (n_contacts * g) / hi)) AS ct,
                           (ARRAY['new','open','open','pending','on_hold','solved','solved','closed','closed','closed'])[1 + pg_temp.r(g, 716, 10)] AS status,
                           pg_temp.tsat(g, lo, hi, t0, span, 717) AS sec
                    OFFSET 0) c
CROSS JOIN LATERAL (SELECT (SELECT company_id FROM crm.contacts WHERE id = ct) AS cid OFFSET 0) co
$$;

-- 70% of the attachments belong to an activity in act_lo..act_hi, the others to a ticket.
CREATE OR REPLACE FUNCTION pg_temp.gen_attachments(lo bigint, hi bigint, n_users bigint, act_lo bigint, act_hi bigint,
                                                   n_tickets bigint, t0 bigint, span bigint)
RETURNS SETOF crm.attachments LANGUAGE sql STABLE
AS $$
SELECT g, activity_id, ticket_id, 1 + pg_temp.r(g, 810, n_users),
       replace(pg_temp.p(pg_temp.docs(), g, 811), ' ', '_') || '_' || pg_temp.ascii(pg_temp.p(pg_temp.company_prefixes(), g, 812))
         || '_' || (2021 + sec / 31557600) || lpad((1 + pg_temp.r(g, 813, 12))::text, 2, '0') || ext,
       mime, octet_length(content), content, pg_temp.ts(sec)
FROM generate_series(lo, hi) g
CROSS JOIN LATERAL (SELECT CASE WHEN pg_temp.r(g, 814, 10) < 7
                                THEN act_lo + pg_temp.r(g, 815, greatest(1, ((act_hi - act_lo + 1) * (g - lo + 1)) / (hi - lo + 1))) END AS activity_id,
                           pg_temp.tsat(g, lo, hi, t0, span, 816) AS sec,
                           (ARRAY['application/pdf|.pdf','application/pdf|.pdf','application/pdf|.pdf','image/png|.png',
                                  'image/jpeg|.jpg','application/vnd.openxmlformats-officedocument.wordprocessingml.document|.docx',
                                  'text/csv|.csv','text/csv|.csv','text/plain|.txt','text/plain|.txt'])[1 + pg_temp.r(g, 817, 10)] AS mt
                    OFFSET 0) a
CROSS JOIN LATERAL (SELECT CASE WHEN activity_id IS NULL THEN 1 + pg_temp.r(g, 818, greatest(1, (n_tickets * g) / hi)) END AS ticket_id,
                           split_part(mt, '|', 1) AS mime, split_part(mt, '|', 2) AS ext,
                           pg_temp.attachment_content(g, split_part(mt, '|', 1), 1024 + pg_temp.r(g, 819, 7169)::int) AS content
                    OFFSET 0) c
$$;

-- History of changes to the other tables, oldest first (occurred_at grows with id).
-- With updates_only, every row describes an UPDATE (crm_day.sql's background activity).
CREATE OR REPLACE FUNCTION pg_temp.gen_audit(lo bigint, hi bigint, n_users bigint, n_companies bigint, n_contacts bigint,
                                             n_deals bigint, n_activities bigint, n_tickets bigint,
                                             t0 bigint, span bigint, updates_only boolean)
RETURNS SETOF crm.audit_log LANGUAGE sql STABLE
AS $$
SELECT g, pg_temp.ts(sec),
       CASE WHEN pg_temp.r(g, 910, 10) < 8 THEN pg_temp.user_email(1 + pg_temp.r(g, 911, n_users))
            ELSE (ARRAY['system','api:zapier','api:hubspot-sync','import:csv','workflow:lead-scoring','job:dedupe'])[1 + pg_temp.r(g, 912, 6)] END,
       tbl, rid, action,
       CASE WHEN action = 'INSERT' THEN NULL
            WHEN action = 'DELETE' THEN pg_temp.audit_snapshot(tbl, rid, g, n_contacts, n_companies)
            ELSE pg_temp.audit_change(tbl, rid, g, sec, false) END,
       CASE WHEN action = 'DELETE' THEN NULL
            WHEN action = 'INSERT' THEN pg_temp.audit_snapshot(tbl, rid, g, n_contacts, n_companies)
            ELSE pg_temp.audit_change(tbl, rid, g, sec, true) END
FROM generate_series(lo, hi) g
CROSS JOIN LATERAL (SELECT pg_temp.tsat(g, lo, hi, t0, span, 913) AS sec,
                           (ARRAY['contacts','contacts','contacts','deals','deals','activities','activities','tickets','tickets','companies'])[1 + pg_temp.r(g, 914, 10)] AS tbl,
                           pg_temp.r(g, 915, 100) AS a
                    OFFSET 0) t
CROSS JOIN LATERAL (SELECT 1 + pg_temp.r(g, 916, greatest(1, (CASE tbl WHEN 'contacts' THEN n_contacts WHEN 'deals' THEN n_deals
                                                                        WHEN 'activities' THEN n_activities WHEN 'tickets' THEN n_tickets
                                                                        ELSE n_companies END * g) / hi)) AS rid,
                           CASE WHEN updates_only THEN 'UPDATE' WHEN a < 15 THEN 'INSERT'
                                WHEN a < 97 OR tbl <> 'activities' THEN 'UPDATE' ELSE 'DELETE' END AS action
                    OFFSET 0) r
$$;

\if :{?crm_defs_only}
\quit
\endif

-- =============================================================================
-- Generation
-- =============================================================================
\if :{?scale}
\else
\set scale 1
\endif
SET synchronous_commit = off;
SET work_mem = '64MB';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM crm.users) OR EXISTS (SELECT 1 FROM crm.companies)
       OR EXISTS (SELECT 1 FROM crm.audit_log) THEN
        RAISE EXCEPTION 'crm tables are not empty; load bench/crm_schema.sql into a fresh database first';
    END IF;
END $$;

-- Row counts (scale 1 ~ 1 GiB).
SELECT greatest(10, round(500 * :scale))::bigint       AS n_users,
       greatest(20, round(24000 * :scale))::bigint     AS n_companies,
       greatest(50, round(240000 * :scale))::bigint    AS n_contacts,
       greatest(20, round(96000 * :scale))::bigint     AS n_deals,
       greatest(50, round(360000 * :scale))::bigint    AS n_activities,
       greatest(20, round(72000 * :scale))::bigint     AS n_tickets,
       greatest(10, round(29000 * :scale))::bigint     AS n_attachments,
       greatest(200, round(1200000 * :scale))::bigint  AS n_audit
\gset
\echo crm_generate: scale :scale, users :n_users, companies :n_companies, contacts :n_contacts, deals :n_deals, activities :n_activities, tickets :n_tickets, attachments :n_attachments, audit_log :n_audit

-- All rows are created between 2021-01-01 and 2024-12-31 (t0 = 0, span = 4 years).
\set span 126230400
INSERT INTO crm.users OVERRIDING SYSTEM VALUE
SELECT * FROM pg_temp.gen_users(1, :n_users, 0, :span);
INSERT INTO crm.companies OVERRIDING SYSTEM VALUE
SELECT * FROM pg_temp.gen_companies(1, :n_companies, :n_users, 0, :span);
INSERT INTO crm.contacts OVERRIDING SYSTEM VALUE
SELECT * FROM pg_temp.gen_contacts(1, :n_contacts, :n_users, :n_companies, 0, :span);
INSERT INTO crm.deals OVERRIDING SYSTEM VALUE
SELECT * FROM pg_temp.gen_deals(1, :n_deals, :n_users, :n_contacts, 0, :span);
INSERT INTO crm.activities OVERRIDING SYSTEM VALUE
SELECT * FROM pg_temp.gen_activities(1, :n_activities, :n_users, :n_contacts, :n_deals, 0, :span);
INSERT INTO crm.tickets OVERRIDING SYSTEM VALUE
SELECT * FROM pg_temp.gen_tickets(1, :n_tickets, :n_users, :n_contacts, 0, :span);
INSERT INTO crm.attachments OVERRIDING SYSTEM VALUE
SELECT * FROM pg_temp.gen_attachments(1, :n_attachments, :n_users, 1, :n_activities, :n_tickets, 0, :span);
INSERT INTO crm.audit_log OVERRIDING SYSTEM VALUE
SELECT * FROM pg_temp.gen_audit(1, :n_audit, :n_users, :n_companies, :n_contacts, :n_deals, :n_activities, :n_tickets,
                                0, :span, false);

-- -----------------------------------------------------------------------------
-- Identity sequences continue after the generated ids; statistics.
-- -----------------------------------------------------------------------------
SELECT setval(pg_get_serial_sequence('crm.' || t, 'id'), n)
FROM (VALUES ('users', :n_users), ('companies', :n_companies), ('contacts', :n_contacts), ('deals', :n_deals),
             ('activities', :n_activities), ('tickets', :n_tickets), ('attachments', :n_attachments),
             ('audit_log', :n_audit)) v(t, n)
\g /dev/null

VACUUM ANALYZE crm.users, crm.companies, crm.contacts, crm.deals, crm.activities, crm.tickets,
               crm.attachments, crm.audit_log;
